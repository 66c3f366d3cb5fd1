"""The status page's data: replicas and slots, the queue and every job in it, how the last answers went, the
platforms, the model and the settings (secrets masked). Read-only, except that whoever presents PLAYGROUND_TOKEN
may stop any answer from it.

    GET  /api/status         the report (JSON); the playground's page shows it
    POST /api/status/stop    {"job": "<job id>"}: stop an answer (PLAYGROUND_TOKEN only)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from aiohttp import web

from bots.web.access import Access, bearer, same_origin
from engbot.activity import Activity
from engbot.http import Connected, readiness
from engbot.settings import RunSettings, is_setting
from engine.config import mask
from engine.local import Engine

log = logging.getLogger("engbot")


def engbot_version() -> str:
    try:
        return version("engbot")
    except PackageNotFoundError:  # (run from a source tree that was never installed)
        return "unknown"


class StatusView:
    """The status report of one ``engbot run`` process."""

    def __init__(self, activity: Activity, settings: RunSettings, environ: Mapping[str, str], access: Access,
                 connections: Callable[[], Sequence[Connected]] = lambda: ()) -> None:
        self.activity, self.settings, self.access, self.connections = activity, settings, access, connections
        self.shown_settings = [(name, mask(name, environ[name])) for name in sorted(environ) if is_setting(name)]
        self.started = time.monotonic()

    def mount(self, app: web.Application) -> None:
        app.router.add_get("/api/status", self.get)
        app.router.add_post("/api/status/stop", self.stop)

    async def get(self, request: web.Request) -> web.Response:
        admin = self.access.admin(bearer(request.headers.get("Authorization")))
        return web.json_response(self.report(admin=admin), headers={"Cache-Control": "no-store"})

    async def stop(self, request: web.Request) -> web.Response:
        host = request.headers.get("Host", "")
        if request.content_type != "application/json" or not same_origin(request.headers.get("Origin"), host):
            return web.json_response({"error": "Requests must come from the playground's page."}, status=403)
        if not self.access.admin(bearer(request.headers.get("Authorization"))):
            return web.json_response({"error": "Stopping answers from the status page needs PLAYGROUND_TOKEN."},
                                     status=403)
        try:
            body = await request.json()
        except ValueError:
            body = None
        job = body.get("job") if isinstance(body, dict) else None
        if not isinstance(job, str) or not job:
            return web.json_response({"error": "Which job?"}, status=400)
        stopped = self.activity.cancel(job)
        log.info("job %s stopped from the status page", job[:8])
        return web.json_response({"stopped": stopped})

    def report(self, *, admin: bool = False) -> dict[str, Any]:
        activity = self.activity
        inner = activity.inner
        health = activity.health()
        recent = activity.recent()
        jobs = [{"job": h.job.id, "platform": h.job.platform, "state": "waiting" if h.position else "answering",
                 "position": h.position or None, "eta_s": _round(h.eta_s), "age_s": _round(time.monotonic()
                                                                                           - h.submitted_at)}
                for h in activity.in_flight()]
        report: dict[str, Any] = {
            "version": engbot_version(),
            "uptime_s": round(time.monotonic() - self.started),
            "ready": readiness(activity, self.connections()),
            "health": {"ok": health.ok, **{k: v for k, v in health.detail.items() if k != "workers"}},
            "queue": {"backend": self.settings.queue.backend, "waiting": activity.queued,
                      "running": activity.running, "jobs": jobs},
            "recent": {"answers": recent.answers, "ttft_s": _round(recent.ttft_s, 2),
                       "tokens_per_s": _round(recent.tokens_per_s)},
            "settings": self.shown_settings,
            "admin": admin,
        }
        if isinstance(inner, Engine):
            engine_settings = inner.settings
            report["model"] = {"file": engine_settings.model_path.name, "backend": engine_settings.model_backend,
                               "layout": engine_settings.layout, "context": engine_settings.context_length or None,
                               "kv_cache_tokens": engine_settings.kv_cache_tokens or None}
            report["replicas"] = [{"index": i + 1, "state": state, "busy": busy,
                                   "slots": engine_settings.parallel_slots}
                                  for i, (state, busy) in enumerate(inner.slots())]
            report["queue"]["max"] = engine_settings.queue_max_size
        else:  # Redis, a model server (MODEL_BACKEND=openai) or several models (MODELS)
            report["model"] = {"where": inner.describe()}
            report["queue"]["max"] = (self.settings.queue.max_pending if self.settings.queue.backend == "redis"
                                      else self.settings.engine.queue_max_size)
        return report


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)
