"""The HTTP side port: Prometheus ``/metrics``, ``/healthz`` and ``/readyz``.

``/readyz`` is 200 while the agent serves with at least one runtime up, else
503; either way its body lists each runtime the node runs as ``kind: up`` or
``kind: unavailable: <reason>``.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


class HttpServer:
    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        ready: Callable[[], bool],
        runtimes: Callable[[], dict[str, str]] = dict,
    ) -> None:
        """``runtimes()``: runtime kind -> "" when up, else why it is unavailable."""
        self._host = host
        self._port = port
        self._registry = registry
        self._ready = ready
        self._runtimes = runtimes
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self._port

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        ready = self._ready()
        lines = ["ready" if ready else "not ready"]
        for kind, reason in self._runtimes().items():
            lines.append(f"{kind}: up" if not reason else f"{kind}: unavailable: {reason}")
        return web.Response(status=200 if ready else 503, text="\n".join(lines) + "\n")
