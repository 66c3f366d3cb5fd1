"""``ChannelSettings``: the one place the adapters ask what applies where a question was asked (the settings file,
the channel's persona, the engine's defaults), and where personas are set. ``engbot run`` makes one and hands it
to every adapter; it reloads the settings file on SIGHUP and when the file changes, keeping the settings it has
when the new file is not valid.

    settings = ChannelSettings.from_environ(environ)          # ConfigError: file, line and key
    effective = await settings.effective(Place("slack", "C0123", guild="T0123"))
    question = Question(..., system_prompt=effective.job_system_prompt, params=effective.job_params)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from bots.answer import Unanswerable
from bots.channels.config import ChannelConfig, Checks, ConfigFileError, load_config, persona_too_long
from bots.channels.effective import Defaults, Effective, Persona, Place, resolve
from bots.channels.store import MemoryPersonas, PersonaStore, RedisPersonas, SqlitePersonas, StoreError
from bots.files.limits import FileLimits
from bots.files.read import FileText, Incoming, Skipped, compose, read_files
from bots.messages import Messages
from bots.thinking import KNOWN_TAGS, show_thinking_from_environ, tags_from_environ
from bots.tokens import BYTES_PER_TOKEN, ContextBudget, estimate_tokens
from engine.config import EngineSettings, Env, QueueSettings
from engine.errors import ConfigError, ModelFileError
from engine.models.fleet import FleetSettings

log = logging.getLogger("engbot.channels")

POLL_S = 2.0  # how often the settings file's modification time is checked
DEFAULT_STATE_PATH = "engbot-state.db"
UNKNOWN_CONTEXT = 2048  # CONTEXT_LENGTH=0 and a model file this process cannot read (a Redis adapter process)


class Unread:
    """(``from_environ``'s default: the caller did not read MODELS, so it is read here.)"""


UNREAD = Unread()


class PersonaTooLong(ValueError):
    """The persona does not fit the context; the message has the numbers."""


class ChannelSettings:
    """See the module docstring."""

    def __init__(self, *, defaults: Defaults | None = None, budget: ContextBudget | None = None,
                 config_path: Path | None = None, store: PersonaStore | None = None,
                 files: FileLimits | None = None, tags: Sequence[tuple[str, str]] = KNOWN_TAGS,
                 models: frozenset[str] = frozenset(), poll_s: float = POLL_S,
                 budgets: Mapping[str, ContextBudget] | None = None) -> None:
        self.defaults = defaults or Defaults()
        self.budget = budget or ContextBudget()  # the default model's context
        self.budgets = dict(budgets or {})  # with several models (MODELS): each one's, by name
        self.checks = Checks(self.budget, self.defaults.params.max_new_tokens, models)
        self.config_path = config_path
        self.store: PersonaStore = store or MemoryPersonas()
        self.files = files or FileLimits()
        self.tags = tuple(tags)
        self.poll_s = poll_s
        self.config = load_config(config_path, self.checks) if config_path else ChannelConfig()
        self.reloads = 0  # the new files taken (a test waits for it)

    def __repr__(self) -> str:
        return f"<ChannelSettings file={self.config_path} tables={len(self.config.scopes)} personas in " \
               f"{self.store.describe()}>"

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], *, engine: EngineSettings | None = None,
                     queue: QueueSettings | None = None, fleet: FleetSettings | Unread | None = UNREAD
                     ) -> ChannelSettings:
        """From ENGBOT_CONFIG, STATE_PATH (or Redis with QUEUE_BACKEND=redis), SHOW_THINKING, THINKING_TAGS, the
        FILE_* limits and the engine's settings (``engine``, ``queue``, ``fleet``: as the caller read them; else
        read here). With MODELS, a channel's ``model`` is one of their names. ``ConfigError`` for a bad value or
        file (with its line)."""
        env = Env(environ)
        engine = engine or EngineSettings.from_environ(environ, check_model=False)
        queue = queue or QueueSettings.from_environ(environ)
        if isinstance(fleet, Unread):
            fleet = FleetSettings.from_environ(environ, check_model=False) if env.raw("MODELS") else None
        context = engine.context_length or _trained_context(engine.model_path)
        models = frozenset({engine.model_path.name, engine.model_path.stem, "default"})
        default_model, model_source = engine.model_path.name, "MODEL_PATH"
        budgets: dict[str, ContextBudget] = {}
        if fleet is not None:  # several models: the default one's context, and their names
            budgets = {m.name: ContextBudget(m.settings.context_length or _trained_context(m.settings.model_path))
                       for m in fleet.models}
            context = budgets[fleet.default].context_tokens
            models, default_model = frozenset({*fleet.names, "default"}), fleet.default
            model_source = "DEFAULT_MODEL"
        elif engine.model_backend == "openai":  # the model is a server's (one: jobs cannot pick another there)
            served = env.raw("OPENAI_MODEL") or ""
            default_model, model_source = served or "the server's own", "OPENAI_MODEL"
            models = frozenset({"default", served} - {""})
        defaults = Defaults(system_prompt=engine.system_prompt, params=engine.defaults,
                            show_thinking=show_thinking_from_environ(env), model=default_model,
                            model_source=model_source)
        raw = env.raw("ENGBOT_CONFIG")
        path = Path(raw).expanduser().resolve() if raw else None
        if path is not None and not path.is_file():
            raise ConfigError("ENGBOT_CONFIG", raw, "no such file: set it to the path of a TOML settings file, or "
                              "leave it empty")
        store: PersonaStore
        if queue.backend == "redis":
            store = RedisPersonas(queue.redis_url, queue.key_prefix, queue.redis_url_masked)
        else:
            sqlite = SqlitePersonas(Path(env.raw("STATE_PATH") or DEFAULT_STATE_PATH).expanduser().resolve())
            sqlite.check()  # (created when the first persona is set)
            store = sqlite
        return cls(defaults=defaults, budget=ContextBudget(context), config_path=path, store=store,
                   files=FileLimits.from_environ(environ), tags=tags_from_environ(env), models=models,
                   budgets=budgets)

    # ---- what applies where ----

    async def effective(self, place: Place) -> Effective:
        """The settings at ``place``. A store that cannot be read costs the persona (logged), never the answer."""
        try:
            persona = await self.store.get(place.platform, place.persona_channel)
        except StoreError as exc:
            log.warning("the persona of %s %s could not be read (%s): answering without it", place.platform,
                        place.persona_channel, exc)
            persona = None
        return resolve(self.config, self.defaults, place, persona)

    def budget_for(self, effective: Effective) -> ContextBudget:
        """The context of the model that answers there (a channel may name one of MODELS)."""
        return self.budgets.get(effective.model, self.budget)

    def files_budget_bytes(self, effective: Effective, question: str) -> int:
        """Bytes of file text that fit with the system prompt, the question and room for the answer."""
        tokens = self.budget_for(effective).prompt_tokens(effective.params.max_new_tokens) - estimate_tokens(
            effective.system_prompt) - estimate_tokens(question)
        return max(0, tokens) * BYTES_PER_TOKEN

    async def with_files(self, question: str, files: Sequence[Incoming], effective: Effective
                         ) -> tuple[str, tuple[str, ...]]:
        """The question with its files' text, within the context and the file limits, and a note for each file
        cut or skipped. ``Unanswerable`` when no file could be read and there is no question either."""
        read = await read_files(files, self.files)
        if not question.strip() and not any(isinstance(r, FileText) for r in read):
            notes = "\n".join("• " + f"{r.name}: {r.reason}" for r in read if isinstance(r, Skipped))
            raise Unanswerable(f"{Messages.FILES_UNREADABLE}\n{notes}")
        return compose(question, read, self.files_budget_bytes(effective, question))

    # ---- personas ----

    async def set_persona(self, place: Place, text: str, by: str) -> Persona:
        """Store ``text`` as the persona of ``place``'s channel. ``PersonaTooLong`` (with the numbers) when it does
        not fit the context; ``StoreError`` when it cannot be stored."""
        effective = await self.effective(place)
        why = persona_too_long(text, self.budget_for(effective), effective.params.max_new_tokens)
        if why:
            raise PersonaTooLong(why)
        persona = Persona(text, by, time.time())
        await self.store.put(place.platform, place.persona_channel, persona)
        log.info("persona of %s %s set by %s (%d characters)", place.platform, place.persona_channel, by, len(text))
        return persona

    async def reset_persona(self, place: Place, by: str) -> bool:
        removed = await self.store.delete(place.platform, place.persona_channel)
        if removed:
            log.info("persona of %s %s reset by %s", place.platform, place.persona_channel, by)
        return removed

    # ---- the settings file ----

    def reload(self, *, force: bool = True) -> bool:
        """Read the settings file again (``force``: even if it seems unchanged). A file that is not valid is
        logged and the settings stay as they were. True when new settings were taken."""
        path = self.config_path
        if path is None:
            return False
        try:
            mtime = path.stat().st_mtime_ns
        except OSError as exc:
            log.error("the settings file %s cannot be read (%s): keeping the settings loaded before", path, exc)
            return False
        if not force and mtime == self.config.mtime_ns:
            return False
        try:
            config = load_config(path, self.checks)
        except ConfigFileError as exc:
            log.error("%s: keeping the settings loaded before", exc)
            self.config = replace(self.config, mtime_ns=mtime)  # (not read again until it changes)
            return False
        self.config, self.reloads = config, self.reloads + 1
        log.info("settings file %s loaded: %d tables", path, len(config.scopes))
        return True

    async def watch(self) -> None:
        """Reload the file whenever its modification time changes; runs until cancelled."""
        while self.config_path is not None:
            await asyncio.sleep(self.poll_s)
            try:
                self.reload(force=False)
            except Exception:
                log.exception("checking the settings file failed")

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.store.close()


def _trained_context(model_path: Path) -> int:
    """The model file's own context (CONTEXT_LENGTH=0), when this process can read the file."""
    from engine.modelfile import inspect_model

    try:
        return inspect_model(model_path).context_length or UNKNOWN_CONTEXT
    except (ModelFileError, OSError):
        return UNKNOWN_CONTEXT
