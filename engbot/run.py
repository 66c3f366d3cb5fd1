"""``engbot run``: the submitter (the engine, or the Redis queue), every configured platform's adapter, the web
playground and status page, and the HTTP endpoints, in one event loop.

With no chat platform configured, the playground is the platform: ``engbot run`` serves it and says where, instead
of exiting (under ``restart: unless-stopped`` an exit is a restart loop).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Mapping, Sequence

import bots.web
from bots.channels.lookup import ChannelSettings
from bots.registry import Adapter, adapters_from_environ, setup_hint
from bots.web.access import Access
from engbot.activity import Activity
from engbot.connect import Connection
from engbot.http import Mounted, make_app, serve
from engbot.logs import setup_logging
from engbot.settings import AppSettings, RunSettings, check_settings
from engbot.status import StatusView
from engine.api import Submitter
from engine.config import EngineSettings, QueueSettings

log = logging.getLogger("engbot")


def run(environ: Mapping[str, str]) -> int:
    """Validate every setting (as ``engbot doctor`` does), then serve until SIGTERM/SIGINT. Exit 0 after a clean
    shutdown, 2 for a bad setting (every one is named)."""
    settings, errors = check_settings(environ)
    if settings is None:
        for error in errors:
            print(f"engbot: {error}", file=sys.stderr)
        return 2
    setup_logging(settings.app.log_level, settings.app.log_format)
    activity = Activity(make_submitter(environ))
    channels = settings.channels  # ENGBOT_CONFIG, personas (STATE_PATH or Redis), FILE_*...
    adapters = adapters_from_environ(environ, activity, channels)
    access = web_access(settings, playground=not adapters)
    web = bots.web.make_adapter(settings.web, activity, access, channels)
    if not adapters:
        log.info("no chat platform is configured (set %s): the playground is the bot's platform", setup_hint())
    status = StatusView(activity, settings, environ, access)
    return asyncio.run(serve_until_signal(activity, [*adapters, web], settings.app, status=status,
                                          channels=channels))


def web_access(settings: RunSettings, *, playground: bool) -> Access:
    """Who may chat in the playground: with PLAYGROUND_TOKEN, its holders; without, this machine, when the
    playground is the only platform and ``engbot run`` listens on a loopback address."""
    app = settings.app
    open_without_token = playground and app.loopback
    if not playground:
        locked = "Chat here is closed while a chat platform is configured: set PLAYGROUND_TOKEN to open it."
    else:
        locked = (f"This playground listens on HTTP_HOST={app.http_host}, where other machines can reach it: set "
                  "PLAYGROUND_TOKEN to chat here (or HTTP_HOST=127.0.0.1).")
    return Access(settings.web.token, open_without_token, locked)


def make_submitter(environ: Mapping[str, str]) -> Submitter:
    """What the adapters submit to: a RedisSubmitter that queues jobs in Redis for ``engbot worker`` hosts
    (QUEUE_BACKEND=redis: this process then loads no model), a RemoteSubmitter that sends them to an
    OpenAI-compatible server (MODEL_BACKEND=openai), several in-process engines (MODELS), or the in-process Engine."""
    queue = QueueSettings.from_environ(environ)
    if queue.backend == "redis":
        from engine.redis import RedisSubmitter

        grace = EngineSettings.from_environ(environ, check_model=False).shutdown_grace_s
        return RedisSubmitter(queue, shutdown_grace_s=grace)
    settings = EngineSettings.from_environ(environ)
    if settings.model_backend == "openai":
        from engine.remote import RemoteSettings, RemoteSubmitter

        return RemoteSubmitter(settings, RemoteSettings.from_environ(environ))
    from engine.models.fleet import FleetSettings

    fleet = FleetSettings.from_environ(environ)
    if fleet is not None:  # several models (MODELS), each with its own replicas
        from engine.local.fleet import EngineFleet

        return EngineFleet(fleet)
    from engine.local import Engine

    return Engine(settings)


async def serve_until_signal(submitter: Submitter, adapters: Sequence[Adapter], app_settings: AppSettings,
                             stop: asyncio.Event | None = None, *, status: StatusView | None = None,
                             channels: ChannelSettings | None = None) -> int:
    """Start everything, wait for a signal (or ``stop``), then shut down in order: no new questions, drain the
    submitter for SHUTDOWN_GRACE_S (unfinished answers get a "restarting" reply), close the adapters.

    The HTTP endpoints come first (a port in use stops everything at once, naming HTTP_PORT), then the submitter
    (the model loads), then the platforms: one that cannot be reached is tried again while the rest serves
    (``engbot.connect``); one that refuses its token raises ``ConfigError``. With ``channels``, its settings file
    is reloaded on SIGHUP and whenever it changes."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    connections = [Connection(adapter) for adapter in adapters]
    app = make_app(submitter, lambda: connections)
    for part in [*adapters, status]:
        if isinstance(part, Mounted):
            part.mount(app)
    if status is not None:
        status.connections = lambda: connections
    runner = await serve(app, app_settings.http_host, app_settings.http_port)
    if any(isinstance(adapter, Mounted) for adapter in adapters):
        log.info("the playground and status page: %s", app_settings.local_url)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watcher: asyncio.Task[None] | None = None
    if channels is not None and channels.config_path is not None:
        loop.add_signal_handler(signal.SIGHUP, channels.reload)
        watcher = asyncio.create_task(channels.watch(), name="engbot-config-watch")
    try:
        await submitter.start()
        log.info("%s", submitter.describe())
        await _connect_until(stop, connections)
        log.info("shutting down: no new questions; running answers get %.0f s", submitter.shutdown_grace_s)
        for adapter in adapters:
            await adapter.stop_intake()
    finally:
        await submitter.stop()
        for adapter in adapters:
            try:
                await adapter.close()
            except Exception as exc:
                log.warning("closing %s: %s: %s", adapter.name, type(exc).__name__, exc)
        await runner.cleanup()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        if watcher is not None:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        if channels is not None:
            await channels.close()
    log.info("stopped")
    return 0


async def _connect_until(stop: asyncio.Event, connections: Sequence[Connection]) -> None:
    """Connect every platform (trying again as long as it takes) until ``stop`` is set; raises the ``ConfigError``
    of a platform that refused its settings."""
    trying = {asyncio.create_task(c.establish(), name=f"engbot-connect-{c.name}") for c in connections}
    stopped = asyncio.create_task(stop.wait())
    try:
        while not stop.is_set():
            done, _ = await asyncio.wait({stopped, *trying}, return_when=asyncio.FIRST_COMPLETED)
            for task in done - {stopped}:
                trying.discard(task)
                task.result()
    finally:
        stopped.cancel()
        for task in trying:
            task.cancel()
        await asyncio.gather(stopped, *trying, return_exceptions=True)

