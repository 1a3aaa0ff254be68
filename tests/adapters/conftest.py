"""Collection rules for the runtime-adapter tests.

Tests that need MLServer's own classes in-process (the simple-string model,
the repository) live in ``mlserver/inproc/``: the main test process must never
import ``mlserver`` (see tests/conftest.py), so ``mlserver/test_inproc.py``
runs that folder in a child pytest with ``MESHLET_INPROC_MLSERVER`` set.
"""

from __future__ import annotations

import os

collect_ignore = [] if os.environ.get("MESHLET_INPROC_MLSERVER") else ["mlserver/inproc"]
