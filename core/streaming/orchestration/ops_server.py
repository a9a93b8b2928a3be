"""A small HTTP endpoint per service process: liveness, readiness, Prometheus metrics.

Runs inside the service's own event loop (aiohttp), so it never fights the
service's signal handling. Off unless enabled in settings; binds 127.0.0.1
unless told otherwise. Every route is a read: nothing here changes the service.

- ``/health/live`` answers from memory (is the process serving, are its
  consumption loops alive): no network call, so a broker or Redis stall never
  makes a liveness probe restart the process.
- ``/health/ready`` checks the dependencies (broker, Redis, group membership),
  bounded by ``ready_timeout_s``; a check that does not answer in time is
  reported as not ready.
- ``/metrics`` serves the service's Prometheus registries.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from core.streaming.logging_setup import redact

HealthProvider = Callable[[], Awaitable[dict[str, Any]]]
LivenessProvider = Callable[[], dict[str, Any]]

#: Default bound of a readiness check.
READY_TIMEOUT_S = 3.0


class OpsServer:
    """Serves ``/health/live``, ``/health/ready`` and ``/metrics`` on one port.

    ``health`` is the full (async) report used for readiness; ``live`` a cheap,
    synchronous one for liveness. Without ``live``, liveness says whether this
    process's event loop answers, which is all it can tell without a network call.
    """

    def __init__(
        self,
        health: HealthProvider,
        registries: Callable[[], list[CollectorRegistry]],
        *,
        live: LivenessProvider | None = None,
        host: str = "127.0.0.1",
        port: int = 9100,
        ready_timeout_s: float = READY_TIMEOUT_S,
    ) -> None:
        self._health = health
        self._registries = registries
        self.live_provider = live
        self.host = host
        self.port = port
        self.ready_timeout_s = ready_timeout_s
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
        report = (
            self.live_provider()
            if self.live_provider is not None
            else {"status": "running", "live": True}
        )
        status = 200 if report.get("live") else 503
        return web.json_response(report, status=status, dumps=_dumps)

    async def _ready(self, _: web.Request) -> web.Response:
        try:
            report = await asyncio.wait_for(self._health(), self.ready_timeout_s)
        except TimeoutError:
            report = {
                "status": "unknown",
                "ready": False,
                "error": f"health check did not answer within {self.ready_timeout_s:g} s",
            }
        status = 200 if report.get("ready") else 503
        return web.json_response(report, status=status, dumps=_dumps)

    async def _metrics(self, _: web.Request) -> web.Response:
        body = b"".join(generate_latest(r) for r in self._registries())
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _dumps(value: Any) -> str:
    return redact(json.dumps(value, default=str))
