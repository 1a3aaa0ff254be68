"""MLServer model repository that finds a model by name in O(1).

MLServer's default repository globs the whole repository on every load (with
20,000 model folders one load took about 20 s). The adapter writes each model
to ``<root>/<name>/model-settings.json``, so the name *is* the path. ``list``
returns nothing: MLServer loads nothing by itself, the agent decides what is
loaded. Plugged in through MLServer's ``model_repository_implementation``
setting; runs inside the MLServer process only.
"""

from __future__ import annotations

import builtins
import os

from mlserver.errors import ModelNotFound
from mlserver.repository import DEFAULT_MODEL_SETTINGS_FILENAME, ModelRepository
from mlserver.repository.load import load_model_settings
from mlserver.settings import ModelSettings


class DirectModelRepository(ModelRepository):
    """``find(name)`` reads ``<root>/<name>/model-settings.json`` and nothing else."""

    def __init__(self, root: str) -> None:
        self._root = os.path.abspath(root)

    async def list(self) -> builtins.list[ModelSettings]:
        return []

    async def find(self, name: str) -> builtins.list[ModelSettings]:
        if not name or "/" in name or "\\" in name or ".." in name or "\x00" in name:
            raise ModelNotFound(name)
        path = os.path.join(self._root, name, DEFAULT_MODEL_SETTINGS_FILENAME)
        try:
            settings = load_model_settings(path)
        except FileNotFoundError:
            raise ModelNotFound(name) from None
        settings._source = _code_settings_path(settings, path)
        return [settings]


def _code_settings_path(settings: ModelSettings, path: str) -> str | None:
    """Where MLServer should look for the model's own code, if it has any.

    MLServer re-imports (``importlib.reload``) the implementation module on
    every load of settings that remember their file, and puts that file's
    folder on ``sys.path`` meanwhile, for model code kept beside the settings.
    The adapter's settings folders hold no code, so by default the file is
    forgotten: every copy then shares one imported class, with no reload and
    no new class object per load. Only an artifact that carries its own
    ``model-settings.json`` (model type "mlserver") may carry code beside it;
    there MLServer's behaviour is kept, pointed at the artifact folder.
    """
    uri = settings.parameters.uri if settings.parameters else None
    if not uri or not os.path.isabs(uri):
        return None
    folder = uri if os.path.isdir(uri) else os.path.dirname(uri)
    own_settings = os.path.join(folder, DEFAULT_MODEL_SETTINGS_FILENAME)
    if own_settings == path or not os.path.isfile(own_settings):
        return None
    return own_settings
