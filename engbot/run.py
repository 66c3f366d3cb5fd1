"""``engbot run``: the submitter (the engine, or the Redis queue), every configured platform's adapter, and the HTTP
endpoints, in one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Mapping

from bots.channels.lookup import ChannelSettings
from bots.registry import Adapter, adapters_from_environ, setup_hint
from engbot.http import make_app, serve
from engbot.logs import setup_logging
from engbot.settings import AppSettings
from engine.api import Submitter
from engine.config import EngineSettings, QueueSettings
from engine.errors import ConfigError

log = logging.getLogger("engbot")

NO_ADAPTER = f"engbot: no chat platform is configured: set {setup_hint()}, in the environment or .env"


class AdapterStartError(Exception):
    """A chat platform could not be reached at start."""


def run(environ: Mapping[str, str]) -> int:
    """Validate every setting, then serve until SIGTERM/SIGINT. Exit 0 after a clean shutdown."""
    app_settings = AppSettings.from_environ(environ)
    setup_logging(app_settings.log_level, app_settings.log_format)
    submitter = make_submitter(environ)
    channels = ChannelSettings.from_environ(environ)  # ENGBOT_CONFIG, personas (STATE_PATH or Redis), FILE_*...
    adapters = adapters_from_environ(environ, submitter, channels)
    if not adapters:
        print(NO_ADAPTER, file=sys.stderr)
        return 2
    try:
        return asyncio.run(serve_until_signal(submitter, adapters, app_settings, channels=channels))
    except AdapterStartError as exc:
        print(f"engbot: {exc}", file=sys.stderr)
        return 1


def make_submitter(environ: Mapping[str, str]) -> Submitter:
    """What the adapters submit to (QUEUE_BACKEND): the in-process Engine, or a RedisSubmitter that queues jobs in
    Redis for ``engbot worker`` hosts (this process then loads no model)."""
    queue = QueueSettings.from_environ(environ)
    if queue.backend == "redis":
        from engine.redis import RedisSubmitter

        grace = EngineSettings.from_environ(environ, check_model=False).shutdown_grace_s
        return RedisSubmitter(queue, shutdown_grace_s=grace)
    from engine.local import Engine

    return Engine(EngineSettings.from_environ(environ))


async def serve_until_signal(submitter: Submitter, adapters: list[Adapter], app_settings: AppSettings,
                             stop: asyncio.Event | None = None, *, channels: ChannelSettings | None = None) -> int:
    """Start everything, wait for a signal (or ``stop``), then shut down in order: no new mentions, drain the
    submitter for SHUTDOWN_GRACE_S (unfinished answers get a "restarting" reply), close the adapters. With
    ``channels``, its settings file is reloaded on SIGHUP and whenever it changes."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watcher: asyncio.Task[None] | None = None
    if channels is not None and channels.config_path is not None:
        loop.add_signal_handler(signal.SIGHUP, channels.reload)
        watcher = asyncio.create_task(channels.watch(), name="engbot-config-watch")
    runner = await serve(make_app(submitter, lambda: adapters), app_settings.http_host, app_settings.http_port)
    try:
        await submitter.start()
        log.info("%s", submitter.describe())
        for adapter in adapters:
            try:
                await adapter.start()
            except ConfigError:
                raise  # a rejected token: the CLI prints it and exits 2
            except Exception as exc:
                raise AdapterStartError(f"{adapter.name} could not connect: {exc}") from exc
            log.info("%s adapter connected", adapter.name)
        await stop.wait()
        log.info("shutting down: no new questions; running answers get %.0f s", submitter.shutdown_grace_s)
        for adapter in adapters:
            await adapter.stop_intake()
    finally:
        await submitter.stop()
        for adapter in adapters:
            with contextlib.suppress(Exception):
                await adapter.close()
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
