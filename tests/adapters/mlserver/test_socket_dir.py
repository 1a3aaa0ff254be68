"""Where MLServer's channel sockets go when the data dir's path is too long."""

from __future__ import annotations

from pathlib import Path

from adapters.mlserver.adapter import short_socket_dir


def test_short_socket_dir_is_named_by_the_work_dir_and_cleared_for_reuse(
    tmp_path: Path,
) -> None:
    first = Path(short_socket_dir(tmp_path / "work"))
    (first / "mlserver-0.sock").write_text("left by a SIGKILLed agent")
    again = Path(short_socket_dir(tmp_path / "work"))
    other = Path(short_socket_dir(tmp_path / "other"))
    try:
        assert again == first and list(again.iterdir()) == []
        assert other != first
        assert first.stat().st_mode & 0o777 == 0o700
    finally:
        for path in (first, other):
            path.rmdir()
