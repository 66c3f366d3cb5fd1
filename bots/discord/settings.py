"""The Discord settings (DISCORD_*), read once from the environment and checked; the token stays out of ``repr``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from discord.gateway import DiscordWebSocket
from discord.http import Route

import bots.discord.events as ev
from bots.limits import rate_limit_from_environ
from engine.config import Env, mask
from engine.errors import ConfigError

DEFAULT_API_URL = Route.BASE
DEFAULT_GATEWAY_URL = str(DiscordWebSocket.DEFAULT_GATEWAY)


@dataclass(frozen=True, slots=True)
class DiscordSettings:
    """The Discord settings, validated. The token stays out of ``repr``."""

    bot_token: str = field(repr=False)
    api_url: str = DEFAULT_API_URL
    gateway_url: str = DEFAULT_GATEWAY_URL
    guild_id: int | None = None  # sync /ask to this server only (instant) instead of globally
    allowed_guilds: frozenset[str] = frozenset()
    allowed_channels: frozenset[str] = frozenset()
    allowed_roles: frozenset[str] = frozenset()
    admin_roles: frozenset[str] = frozenset()  # holders may steer (stop, regenerate, continue) anyone's answer
    rate_limit_per_user: int = 5
    rate_limit_period_s: float = 60.0
    guild_ready_timeout_s: float = 2.0  # how long READY waits for the servers' data; not a setting, tests shorten it

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> DiscordSettings | None:
        """None when DISCORD_BOT_TOKEN is unset or empty; ``ConfigError`` naming the variable for a bad value."""
        env = Env(environ)
        token = env.raw("DISCORD_BOT_TOKEN")
        if not token:
            return None
        if any(c.isspace() for c in token):
            raise ConfigError("DISCORD_BOT_TOKEN", mask("DISCORD_BOT_TOKEN", token),
                              "a bot token has no spaces: copy it alone from the Bot page of the Developer Portal")
        rate = rate_limit_from_environ(environ)
        guild = _ids(env, "DISCORD_GUILD_ID")
        if len(guild) > 1:
            raise ConfigError("DISCORD_GUILD_ID", env.raw("DISCORD_GUILD_ID"), "expected one server id")
        return cls(
            bot_token=token,
            api_url=_url(env, "DISCORD_API_URL", DEFAULT_API_URL, ("http://", "https://")),
            gateway_url=_url(env, "DISCORD_GATEWAY_URL", DEFAULT_GATEWAY_URL, ("ws://", "wss://")),
            guild_id=int(next(iter(guild))) if guild else None,
            allowed_guilds=_ids(env, "DISCORD_ALLOWED_GUILDS"),
            allowed_channels=_ids(env, "DISCORD_ALLOWED_CHANNELS"),
            allowed_roles=_ids(env, "DISCORD_ALLOWED_ROLES"),
            admin_roles=_ids(env, "DISCORD_ADMIN_ROLES"),
            rate_limit_per_user=rate.limit,
            rate_limit_period_s=rate.period_s,
        )

    @property
    def access(self) -> ev.Access:
        return ev.Access(self.allowed_guilds, self.allowed_channels, self.allowed_roles)


def _ids(env: Env, name: str) -> frozenset[str]:
    ids = frozenset(part.strip() for part in (env.raw(name) or "").split(",") if part.strip())
    if not all(i.isdigit() for i in ids):
        raise ConfigError(name, env.raw(name), "expected Discord ids (numbers; in Discord turn on Developer Mode, "
                          "then right-click > Copy ID), separated by commas")
    return ids


def _url(env: Env, name: str, default: str, schemes: tuple[str, ...]) -> str:
    url = env.raw(name) or default
    if not url.startswith(schemes):
        raise ConfigError(name, url, "expected a URL starting with " + " or ".join(schemes))
    return url.rstrip("/") if name == "DISCORD_API_URL" else url
