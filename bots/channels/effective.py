"""The settings one question gets where it was asked: the engine's defaults, then the settings file's tables from
the widest to the narrowest, then the channel's persona. Pure: tested without files, stores or platforms.

    defaults -> [defaults] -> [dm] -> [slack] -> [slack.dm] -> [slack.team.T1] -> [slack.channel.C1] -> persona
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TypeVar

from bots.channels.config import ChannelConfig, Overrides, Scope
from bots.thinking import ShowThinking
from engine.types import GenParams

GUILD_TABLES = {"slack": "team", "discord": "guild"}
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Place:
    """Where a question is asked. ``guild``: the Slack workspace or Discord server; ``parent``: the channel a
    Discord thread belongs to (its settings and persona apply in the thread)."""

    platform: str
    channel: str
    guild: str | None = None
    parent: str | None = None
    dm: bool = False

    @property
    def persona_channel(self) -> str:
        """The channel whose persona applies here: a thread's parent channel, else the channel itself."""
        return self.parent or self.channel

    def scopes(self) -> list[Scope]:
        """The settings file's tables that apply here, widest first."""
        out: list[Scope] = [("defaults",)]
        if self.dm:
            out.append(("dm",))
        out.append((self.platform,))
        if self.dm:
            out.append((self.platform, "dm"))
        if self.guild and self.platform in GUILD_TABLES:
            out.append((self.platform, GUILD_TABLES[self.platform], self.guild))
        if self.parent:
            out.append((self.platform, "channel", self.parent))
        out.append((self.platform, "channel", self.channel))
        return out


@dataclass(frozen=True, slots=True)
class Persona:
    """A channel's system prompt, set by one of its admins with the persona command."""

    text: str
    set_by: str = ""
    set_at: float = 0.0  # seconds since the epoch


@dataclass(frozen=True, slots=True)
class Defaults:
    """What applies where nothing overrides it: the engine's settings (SYSTEM_PROMPT, MAX_NEW_TOKENS...)."""

    system_prompt: str = "You are a helpful assistant."
    params: GenParams = field(default_factory=GenParams)
    history_chars: int = 24_000
    show_thinking: ShowThinking = "collapsed"
    model: str = ""
    model_source: str = "MODEL_PATH"  # (DEFAULT_MODEL with several models)


@dataclass(frozen=True, slots=True)
class Effective:
    """The settings a question gets. ``sources`` says where each came from (for ``engbot doctor --channel``)."""

    system_prompt: str
    params: GenParams
    history_chars: int
    show_thinking: ShowThinking
    model: str
    allowed_users: frozenset[str] = frozenset()  # empty: everyone (the platform's own allow-lists apply too)
    allowed_roles: frozenset[str] = frozenset()
    persona: Persona | None = None
    sources: Mapping[str, str] = field(default_factory=dict)

    def allows(self, user: str, roles: Iterable[str] = ()) -> bool:
        """Whether ``user`` (holding ``roles``) may ask here. With both lists set, either lets them in."""
        if not self.allowed_users and not self.allowed_roles:
            return True
        return user in self.allowed_users or bool(self.allowed_roles & set(roles))

    @property
    def job_system_prompt(self) -> str | None:
        """For the job: None when it is the engine's own SYSTEM_PROMPT (the engine's host applies it then)."""
        return None if self.sources.get("system_prompt") == "SYSTEM_PROMPT" else self.system_prompt

    @property
    def job_model(self) -> str | None:
        """For the job: the model a table of the settings file names here (one of MODELS); None: the default."""
        named = self.sources.get("model", "").startswith("[") and self.model != "default"
        return self.model if named else None

    @property
    def job_params(self) -> GenParams | None:
        """For the job: None when nothing here changes the engine's defaults."""
        changed = any(self.sources.get(k, "").startswith(("[", "persona")) for k in ("temperature", "max_new_tokens"))
        return self.params if changed else None


def resolve(config: ChannelConfig, defaults: Defaults, place: Place, persona: Persona | None = None) -> Effective:
    """The settings at ``place``: every table of ``config`` that applies, widest first, then ``persona``."""
    chain = [(scope, o) for scope in place.scopes() if (o := config.scopes.get(scope)) is not None]
    sources: dict[str, str] = {}

    def pick(key: str, default: T, source: str) -> T:
        value: T = default
        sources[key] = source
        for scope, overrides in chain:
            found = getattr(overrides, key)
            if found is not None:
                value, sources[key] = found, _where(config, scope, overrides, key)
        return value

    system_prompt = pick("system_prompt", defaults.system_prompt, "SYSTEM_PROMPT")
    if persona is not None:
        system_prompt = persona.text
        sources["system_prompt"] = f"persona set by {persona.set_by or 'an admin'}"
    params = replace(defaults.params, temperature=pick("temperature", defaults.params.temperature, "TEMPERATURE"),
                     max_new_tokens=pick("max_new_tokens", defaults.params.max_new_tokens, "MAX_NEW_TOKENS"))
    return Effective(
        system_prompt=system_prompt, params=params,
        history_chars=pick("history_chars", defaults.history_chars, "built-in"),
        show_thinking=pick("show_thinking", defaults.show_thinking, "SHOW_THINKING"),
        model=pick("model", defaults.model, defaults.model_source),
        allowed_users=pick("allowed_users", frozenset[str](), "everyone"),
        allowed_roles=pick("allowed_roles", frozenset[str](), "everyone"),
        persona=persona, sources=sources,
    )


def _where(config: ChannelConfig, scope: Scope, overrides: Overrides, key: str) -> str:
    table = "[" + ".".join(scope) + "]"
    line = overrides.lines.get(key)
    return f"{table} in {config.path}:{line}" if config.path and line else table
