"""http(s):// pulls against a real aiohttp server on a loopback port 0."""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from agent.errors import LoadFailed
from agent.storage import ArtifactTooLarge, DiskFull, HttpOptions, HttpPuller
from agent.storage import http as http_module
from tests.agent.storage.disk import filling_disk

PAYLOAD = bytes(range(256)) * 40  # 10 KiB
FAST = HttpOptions(
    connect_timeout_s=2, read_timeout_s=5, max_attempts=3, backoff_initial_s=0.01,
    max_redirects=5, chunk_bytes=1024,
)


class Server:
    def __init__(self, base: str, hits: Counter[str]) -> None:
        self.base = base
        self.hits = hits


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    hits: Counter[str] = Counter()

    async def file(request: web.Request) -> web.Response:
        hits[request.path] += 1
        return web.Response(body=PAYLOAD)

    async def status(request: web.Request) -> web.Response:
        hits[request.path] += 1
        return web.Response(status=int(request.match_info["code"]), text="nope")

    async def flaky(request: web.Request) -> web.Response:
        hits[request.path] += 1
        if hits[request.path] <= 2:
            return web.Response(status=503, text="busy")
        return web.Response(body=PAYLOAD)

    async def redirect(request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        hits["redirect"] += 1
        location = "/files/model.bin" if n == 0 else f"/redirect/{n - 1}"
        raise web.HTTPFound(location)

    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for _ in range(10):
            await resp.write(b"c" * 1024)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/files/model.bin", file)
    app.router.add_get("/status/{code}", status)
    app.router.add_get("/flaky/model.bin", flaky)
    app.router.add_get("/redirect/{n}", redirect)
    app.router.add_get("/chunked/model.bin", chunked)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield Server(f"http://{host}:{port}", hits)
    finally:
        await runner.cleanup()


def fresh(tmp_path: Path) -> Path:
    dest = tmp_path / "dest"
    dest.mkdir()
    return dest


async def test_file_is_streamed_to_disk(server: Server, tmp_path: Path) -> None:
    dest = fresh(tmp_path)
    result = await HttpPuller(FAST).pull(f"{server.base}/files/model.bin", dest, 1 << 20)
    assert result.path == dest / "model.bin"
    assert result.path.read_bytes() == PAYLOAD
    assert (result.bytes_written, result.file_count, result.is_dir) == (len(PAYLOAD), 1, False)


@pytest.mark.parametrize(("code", "reason"), [(404, "Not Found"), (403, "Forbidden")])
async def test_client_errors_fail_at_once(
    server: Server, tmp_path: Path, code: int, reason: str
) -> None:
    uri = f"{server.base}/status/{code}"
    dest = fresh(tmp_path)
    with pytest.raises(LoadFailed) as info:
        await HttpPuller(FAST).pull(uri, dest, 1 << 20)
    assert uri in info.value.message
    assert f"HTTP {code} {reason}" in info.value.message
    assert server.hits[f"/status/{code}"] == 1  # a 4xx is not retried
    assert list(dest.iterdir()) == []


async def test_503_twice_then_success(server: Server, tmp_path: Path) -> None:
    result = await HttpPuller(FAST).pull(
        f"{server.base}/flaky/model.bin", fresh(tmp_path), 1 << 20
    )
    assert result.path.read_bytes() == PAYLOAD
    assert server.hits["/flaky/model.bin"] == 3


async def test_5xx_gives_up_after_max_attempts(server: Server, tmp_path: Path) -> None:
    uri = f"{server.base}/status/502"
    with pytest.raises(LoadFailed, match="after 3 attempts: HTTP 502 Bad Gateway"):
        await HttpPuller(FAST).pull(uri, fresh(tmp_path), 1 << 20)
    assert server.hits["/status/502"] == 3


async def test_redirect_chain_is_followed(server: Server, tmp_path: Path) -> None:
    dest = fresh(tmp_path)
    result = await HttpPuller(FAST).pull(f"{server.base}/redirect/3", dest, 1 << 20)
    # Named after the URI asked for, not where the redirects ended.
    assert result.path == dest / "3"
    assert result.path.read_bytes() == PAYLOAD
    assert server.hits["redirect"] == 4


async def test_too_many_redirects(server: Server, tmp_path: Path) -> None:
    with pytest.raises(LoadFailed, match="more than 5 redirects"):
        await HttpPuller(FAST).pull(f"{server.base}/redirect/9", fresh(tmp_path), 1 << 20)


async def test_content_length_over_the_limit(server: Server, tmp_path: Path) -> None:
    dest = fresh(tmp_path)
    with pytest.raises(ArtifactTooLarge, match=f"is {len(PAYLOAD)} bytes, over the limit"):
        await HttpPuller(FAST).pull(f"{server.base}/files/model.bin", dest, 1000)
    assert list(dest.iterdir()) == []


async def test_chunked_body_over_the_limit(server: Server, tmp_path: Path) -> None:
    dest = fresh(tmp_path)
    with pytest.raises(ArtifactTooLarge, match="stopped after"):
        await HttpPuller(FAST).pull(f"{server.base}/chunked/model.bin", dest, 3000)
    assert list(dest.iterdir()) == []


async def test_unreachable_port(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on the port now: connections are refused.
    uri = f"http://127.0.0.1:{port}/model.bin"
    with pytest.raises(LoadFailed) as info:
        await HttpPuller(FAST).pull(uri, fresh(tmp_path), 1 << 20)
    assert uri in info.value.message
    assert "after 3 attempts" in info.value.message
    assert "Connect" in info.value.message


async def test_secrets_in_the_uri_stay_out_of_messages(server: Server, tmp_path: Path) -> None:
    host = server.base.removeprefix("http://")
    uri = f"http://user:hunter2@{host}/status/404?X-Amz-Signature=abc123&v=1"
    with pytest.raises(LoadFailed) as info:
        await HttpPuller(FAST).pull(uri, fresh(tmp_path), 1 << 20)
    assert "hunter2" not in info.value.message and "abc123" not in info.value.message
    assert "HTTP 404" in info.value.message and "v=1" in info.value.message


async def test_full_disk_removes_the_partial_file(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each file takes 2 KiB, then fails as a full disk does.
    monkeypatch.setattr(http_module, "open_new", filling_disk(http_module.open_new, 2048))
    dest = fresh(tmp_path)
    with pytest.raises(DiskFull, match=f"no space left on device under {dest} while pulling"):
        await HttpPuller(FAST).pull(f"{server.base}/files/model.bin", dest, 1 << 20)
    assert list(dest.iterdir()) == []
    assert server.hits["/files/model.bin"] == 1  # a full disk is not retried
