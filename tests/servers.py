"""Real storage servers for tests, on loopback port 0 or a free port, stopped
by the test that started them: a static HTTP file server (stdlib, in a thread)
and moto's S3 server (its own process)."""

from __future__ import annotations

import contextlib
import http.server
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_accepting(proc: subprocess.Popen[bytes], port: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        assert proc.poll() is None, f"server exited with {proc.returncode}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"server not accepting on {port} after {timeout_s} s") from exc
            time.sleep(0.05)  # poll


@contextlib.contextmanager
def moto_server(log: Path) -> Iterator[str]:
    """A moto S3 server process; yields its endpoint URL."""
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        wait_accepting(proc, port)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()  # by its pid
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


class FileServer:
    """Serves the files of ``root`` over HTTP on 127.0.0.1 (port 0), counting
    GET requests per path; ``failing = True`` answers 503 to everything."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.gets: dict[str, int] = {}
        self.failing = False
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: object, **kw: object) -> None:
                super().__init__(*args, directory=str(root), **kw)  # type: ignore[arg-type]

            def do_GET(self) -> None:
                server.gets[self.path] = server.gets.get(self.path, 0) + 1
                if server.failing:
                    self.send_error(503, "storage is down")
                    return
                try:
                    super().do_GET()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client stopped reading (a test that cancels a pull)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def __enter__(self) -> FileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)
