"""Operational HTTP endpoints: /healthz (alive), /readyz (can answer), /metrics (Prometheus)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from engine.engine import Engine

if TYPE_CHECKING:
    from engine.redis_queue import RedisSubmitter


class Connected(Protocol):
    name: str

    @property
    def connected(self) -> bool: ...


def readiness(engine: Engine | RedisSubmitter, adapters: Sequence[Connected]) -> dict[str, object]:
    """What /readyz reports: the engine takes jobs, a model is loaded (or loads on demand), adapters are online.
    With QUEUE_BACKEND=redis the adapter process has no model: Redis must answer instead."""
    if isinstance(engine, Engine):
        model = engine.settings.load_on_fly or any(r.alive for r in engine.replicas)
        checks: dict[str, bool] = {"engine": engine.accepting, "model": model}
    else:
        checks = {"engine": engine.accepting, "redis": engine.connected}
    checks.update({a.name: a.connected for a in adapters})
    return {"ready": all(checks.values()), "checks": checks, "queued": engine.queued, "running": engine.running}


def make_app(engine: Engine | RedisSubmitter, adapters: Callable[[], Sequence[Connected]]) -> web.Application:
    async def healthz(request: web.Request) -> web.Response:
        """Alive, and (in-process engine) some replica can run: a model that no replica can load is unhealthy,
        so an orchestrator restarts or flags the container instead of leaving every question to fail."""
        if isinstance(engine, Engine):
            health = engine.health()
            ok = bool(health.pop("ok"))
            return web.json_response({"status": "ok" if ok else "down", **health}, status=200 if ok else 503)
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        report = readiness(engine, adapters())
        return web.json_response(report, status=200 if report["ready"] else 503)

    async def metrics(request: web.Request) -> web.Response:
        body = generate_latest(engine.metrics.registry)
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
