"""``engbot run``: the engine, every adapter whose tokens are set, and the HTTP endpoints, in one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from engbot.http import make_app, serve
from engbot.logs import setup_logging
from engine.config import LOG_FORMATS, EngineSettings, Env, QueueSettings
from engine.engine import Engine, JobSubmitter
from engine.errors import ConfigError

if TYPE_CHECKING:
    from engine.redis_queue import RedisSubmitter

log = logging.getLogger("engbot")

NO_ADAPTER = ("engbot: no chat platform is configured: set SLACK_BOT_TOKEN and SLACK_APP_TOKEN for Slack "
              "(docs/slack.md) and/or DISCORD_BOT_TOKEN for Discord (docs/discord.md), in the environment or .env")


class AdapterStartError(Exception):
    """A chat platform could not be reached at start."""


class Adapter(Protocol):
    """What the app needs of a platform adapter (bots/slack.py, bots/discord.py)."""

    name: str

    @property
    def connected(self) -> bool: ...

    async def start(self) -> None: ...

    async def stop_intake(self) -> None: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class AppSettings:
    http_host: str
    http_port: int
    log_level: str
    log_format: str

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> AppSettings:
        env = Env(environ)
        return cls(
            http_host=env.str("HTTP_HOST", "0.0.0.0"),
            http_port=env.int("HTTP_PORT", 8080, lo=0, hi=65535),
            log_level=env.choice("LOG_LEVEL", "info", ("debug", "info", "warning", "error")),
            log_format=env.choice("LOG_FORMAT", "text", LOG_FORMATS),
        )


def adapters_from_environ(environ: Mapping[str, str], engine: JobSubmitter) -> list[Adapter]:
    """The adapters whose tokens are set (bad adapter settings raise ``ConfigError``)."""
    from bots.discord import DiscordAdapter, DiscordSettings
    from bots.slack import SlackAdapter, SlackSettings

    adapters: list[Adapter] = []
    slack = SlackSettings.from_environ(environ)
    if slack is not None:
        adapters.append(SlackAdapter(slack, engine))
    discord = DiscordSettings.from_environ(environ)
    if discord is not None:
        adapters.append(DiscordAdapter(discord, engine))
    return adapters


def run(environ: Mapping[str, str]) -> int:
    """Validate every setting, then serve until SIGTERM/SIGINT. Exit 0 after a clean shutdown."""
    app_settings = AppSettings.from_environ(environ)
    setup_logging(app_settings.log_level, app_settings.log_format)
    engine = make_engine(environ)
    adapters = adapters_from_environ(environ, engine)
    if not adapters:
        print(NO_ADAPTER, file=sys.stderr)
        return 2
    try:
        return asyncio.run(serve_until_signal(engine, adapters, app_settings))
    except AdapterStartError as exc:
        print(f"engbot: {exc}", file=sys.stderr)
        return 1


# ---- job queue choice (QUEUE_BACKEND); the Redis side lives in engine/redis_queue.py and engbot/worker.py ----


def make_engine(environ: Mapping[str, str]) -> Engine | RedisSubmitter:
    """What the adapters submit to: the in-process Engine, or with QUEUE_BACKEND=redis a RedisSubmitter that
    queues jobs in Redis for `engbot worker` hosts (this process then loads no model)."""
    queue = QueueSettings.from_environ(environ)
    if queue.backend == "redis":
        from engine.redis_queue import RedisSubmitter

        grace = EngineSettings.from_environ(environ, check_model=False).shutdown_grace_s
        return RedisSubmitter(queue, shutdown_grace_s=grace)
    return Engine(EngineSettings.from_environ(environ))


def _describe(engine: Engine | RedisSubmitter) -> tuple[str, float]:
    """A log line for a ready engine, and its shutdown grace in seconds."""
    if isinstance(engine, Engine):
        return (f"engine ready: {engine.settings.layout}, model {engine.settings.model_path.name}",
                engine.settings.shutdown_grace_s)
    return f"job queue ready: Redis at {engine.settings.redis_url_masked}", engine.shutdown_grace_s


async def serve_until_signal(engine: Engine | RedisSubmitter, adapters: list[Adapter], app_settings: AppSettings,
                             stop: asyncio.Event | None = None) -> int:
    """Start everything, wait for a signal (or ``stop``), then shut down in order: no new mentions, drain the
    engine for SHUTDOWN_GRACE_S (unfinished answers get a "restarting" reply), close the adapters."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = await serve(make_app(engine, lambda: adapters), app_settings.http_host, app_settings.http_port)
    try:
        await engine.start()
        ready, grace = _describe(engine)
        log.info("%s", ready)
        for adapter in adapters:
            try:
                await adapter.start()
            except ConfigError:
                raise  # a rejected token: the CLI prints it and exits 2
            except Exception as exc:
                raise AdapterStartError(f"{adapter.name} could not connect: {exc}") from exc
            log.info("%s adapter connected", adapter.name)
        await stop.wait()
        log.info("shutting down: no new questions; running answers get %.0f s", grace)
        for adapter in adapters:
            await adapter.stop_intake()
    finally:
        await engine.stop()
        for adapter in adapters:
            with contextlib.suppress(Exception):
                await adapter.close()
        await runner.cleanup()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("stopped")
    return 0


def run_worker(environ: Mapping[str, str]) -> int:
    """``engbot worker``: an engine host that takes jobs from Redis (QUEUE_BACKEND=redis); see engbot/worker.py."""
    from engbot.worker import run_worker as worker_main

    return worker_main(environ)
