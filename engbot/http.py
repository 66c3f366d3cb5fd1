"""Operational HTTP endpoints: /healthz (alive), /readyz (can answer), /metrics (Prometheus)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from engine.api import Submitter


class Connected(Protocol):
    name: str

    @property
    def connected(self) -> bool: ...


def readiness(submitter: Submitter, adapters: Sequence[Connected]) -> dict[str, object]:
    """What /readyz reports: the submitter's own checks (taking jobs; a model loaded or loaded on demand, or
    Redis answering), and every adapter online."""
    checks = dict(submitter.health().checks)
    checks.update({a.name: a.connected for a in adapters})
    return {"ready": all(checks.values()), "checks": checks, "queued": submitter.queued,
            "running": submitter.running}


def make_app(submitter: Submitter, adapters: Callable[[], Sequence[Connected]]) -> web.Application:
    async def healthz(request: web.Request) -> web.Response:
        """Alive, and (in-process engine) some replica can run: a model that no replica can load is unhealthy,
        so an orchestrator restarts or flags the container instead of leaving every question to fail."""
        health = submitter.health()
        return web.json_response({"status": "ok" if health.ok else "down", **health.detail},
                                 status=200 if health.ok else 503)

    async def readyz(request: web.Request) -> web.Response:
        report = readiness(submitter, adapters())
        return web.json_response(report, status=200 if report["ready"] else 503)

    async def metrics(request: web.Request) -> web.Response:
        body = generate_latest(submitter.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


async def serve(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Start serving ``app``; stop it with ``await runner.cleanup()``."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
