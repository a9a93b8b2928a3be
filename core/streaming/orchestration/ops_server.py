"""A small HTTP endpoint per service process: liveness, readiness, Prometheus metrics.

Runs inside the service's own event loop (aiohttp), so it never fights the
service's signal handling. Off unless enabled in settings.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

HealthProvider = Callable[[], Awaitable[dict[str, Any]]]


class OpsServer:
    """Serves ``/health/live``, ``/health/ready`` and ``/metrics`` on one port."""

    def __init__(
        self,
        health: HealthProvider,
        registries: Callable[[], list[CollectorRegistry]],
        *,
        host: str = "127.0.0.1",
        port: int = 9100,
    ) -> None:
        self._health = health
        self._registries = registries
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Bind and serve. Idempotent. Port 0 picks a free port (see ``port``)."""
        if self._runner is not None:
            return
        app = web.Application()
        app.router.add_get("/health/live", self._live)
        app.router.add_get("/health/ready", self._ready)
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        sockets = getattr(site, "_server", None)
        if sockets is not None and sockets.sockets:
            self.port = int(sockets.sockets[0].getsockname()[1])
        self._runner = runner

    async def stop(self) -> None:
        """Stop serving. Idempotent."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _live(self, _: web.Request) -> web.Response:
        report = await self._health()
        status = 200 if report.get("live") else 503
        return web.json_response(
            {"status": report.get("status"), "live": report.get("live")}, status=status
        )

    async def _ready(self, _: web.Request) -> web.Response:
        report = await self._health()
        status = 200 if report.get("ready") else 503
        return web.json_response(report, status=status, dumps=_dumps)

    async def _metrics(self, _: web.Request) -> web.Response:
        body = b"".join(generate_latest(r) for r in self._registries())
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _dumps(value: Any) -> str:
    import json

    return json.dumps(value, default=str)
