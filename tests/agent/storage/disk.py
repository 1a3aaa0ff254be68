"""A stand-in for a puller module's ``open_new`` whose files fill the disk."""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def filling_disk(
    real_open_new: Callable[[Path], BinaryIO], limit_bytes: int, opened: list[Path] | None = None
) -> Callable[[Path], object]:
    """An ``open_new`` whose files take ``limit_bytes``, then fail with ENOSPC as
    a full disk does; the paths opened are appended to ``opened``."""

    class FillsUp:
        def __init__(self, path: Path) -> None:
            if opened is not None:
                opened.append(path)
            self.file = real_open_new(path)

        def write(self, data: bytes) -> int:
            if self.file.tell() >= limit_bytes:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.file.write(data)

        def __enter__(self) -> FillsUp:
            return self

        def __exit__(self, *exc: object) -> None:
            self.file.close()

    return FillsUp
