"""Operational HTTP endpoints: /healthz (alive), /readyz (can answer), /metrics (Prometheus)."""

from __future__ import annotations

import errno
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from engine.api import Submitter
from engine.errors import ConfigError

SHUTDOWN_TIMEOUT_S = 5.0  # what is still open at the end (a browser's event stream) is closed after this


class Connected(Protocol):
    """A platform's connection as /readyz sees it; ``problem`` (optional) says why it is not connected."""

    name: str

    @property
    def connected(self) -> bool: ...


@runtime_checkable
class Mounted(Protocol):
    """A part of ``engbot run`` with routes of its own on the HTTP server (the playground, the status page)."""

    def mount(self, app: web.Application) -> None: ...


def readiness(submitter: Submitter, adapters: Sequence[Connected]) -> dict[str, object]:
    """What /readyz reports: the submitter's own checks (taking jobs; a model loaded or loaded on demand, or
    Redis answering), and every adapter online; ``waiting`` says why a platform is not (yet) connected."""
    checks = dict(submitter.health().checks)
    checks.update({a.name: a.connected for a in adapters})
    report: dict[str, object] = {"ready": all(checks.values()), "checks": checks, "queued": submitter.queued,
                                 "running": submitter.running}
    waiting = {a.name: problem for a in adapters if not a.connected and (problem := getattr(a, "problem", None))}
    if waiting:
        report["waiting"] = waiting
    return report


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
    """Start serving ``app``; stop it with ``await runner.cleanup()``. ``ConfigError`` naming HTTP_PORT (or
    HTTP_HOST) when it cannot listen there."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError("HTTP_PORT", port, f"{host}:{port} is in use by another program: stop it, or set "
                              "HTTP_PORT to a free port") from None
        raise ConfigError("HTTP_HOST", host, f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return runner
