"""``engbot worker``: a host that answers jobs from the Redis queue (QUEUE_BACKEND=redis).

It runs the same in-process Engine as ``engbot run`` (NUM_WORKERS replicas, each answering PARALLEL_SLOTS questions
together), or with MODEL_BACKEND=openai the remote backend (REMOTE_MAX_INFLIGHT answers at a model server), claims as
many jobs as that has free slots, and serves /healthz, /readyz and /metrics on
HTTP_PORT like ``engbot run`` (0 = any free port).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING

from engbot.http import make_app, serve
from engbot.logs import setup_logging
from engbot.settings import AppSettings
from engine.config import EngineSettings, QueueSettings
from engine.redis import RedisHost

if TYPE_CHECKING:
    from engine.local.fleet import EngineFleet
    from engine.remote import RemoteSubmitter

log = logging.getLogger("engbot")

NOT_REDIS = "engbot: `engbot worker` takes jobs from Redis: set QUEUE_BACKEND=redis and REDIS_URL (docs/scaling.md)"


def run_worker(environ: Mapping[str, str]) -> int:
    """Validate every setting, check Redis, load the model, then answer jobs until SIGTERM/SIGINT.

    Exit 2 on a bad setting or when Redis cannot be reached at start (``QueueUnavailable``, raised to the CLI).
    """
    app_settings = AppSettings.from_environ(environ)
    setup_logging(app_settings.log_level, app_settings.log_format)
    queue = QueueSettings.from_environ(environ)
    if queue.backend != "redis":
        print(NOT_REDIS, file=sys.stderr)
        return 2
    settings = EngineSettings.from_environ(environ)
    if queue.job_deadline_s < settings.generation_timeout_s:
        log.warning("JOB_DEADLINE_S (%g s) is shorter than GENERATION_TIMEOUT_S (%g s): long answers are cut at "
                    "the deadline", queue.job_deadline_s, settings.generation_timeout_s)
    from engine.models.fleet import FleetSettings

    engine: RemoteSubmitter | EngineFleet | None = None
    fleet = FleetSettings.from_environ(environ) if settings.model_backend != "openai" else None
    if settings.model_backend == "openai":  # a host in front of a model server instead of its own replicas
        from engine.remote import RemoteSettings, RemoteSubmitter

        engine = RemoteSubmitter(settings, RemoteSettings.from_environ(environ))
    elif fleet is not None:  # several models (MODELS): this host serves each of them
        from engine.local.fleet import EngineFleet

        engine = EngineFleet(fleet)
    return asyncio.run(work_until_signal(RedisHost(queue, settings, engine=engine), app_settings))


async def work_until_signal(host: RedisHost, app_settings: AppSettings, stop: asyncio.Event | None = None) -> int:
    """Start, wait for a signal (or ``stop``), then drain: claim nothing more, let running answers finish for
    SHUTDOWN_GRACE_S, hand the rest back to the queue for another host."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await host.start()  # QueueUnavailable or ModelFileError: to the CLI (exit 2)
        try:
            runner = await serve(make_app(host.engine, lambda: [host]), app_settings.http_host,
                                 app_settings.http_port)
            try:
                log.info("%s", host.engine.describe())
                await stop.wait()
                log.info("shutting down: no new jobs; running answers get %.0f s", host.engine.shutdown_grace_s)
            finally:
                await runner.cleanup()
        finally:
            await host.stop()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("stopped")
    return 0
