"""``engbot doctor --channel C0123``: the settings a channel's questions get, and where each one comes from (the
engine's settings, a table of the settings file with its line, the channel's persona)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

from bots.channels.effective import Persona, Place, resolve
from bots.channels.lookup import ChannelSettings
from bots.channels.store import StoreError


def _line(label: str, value: object, source: str = "") -> None:
    print(f"  {label:<18} {value}" + (f"   ({source})" if source else ""))


def channel_report(environ: Mapping[str, str], channel: str, *, guild: str | None = None, dm: bool = False) -> int:
    """Print the effective settings of ``channel`` (a Slack ID such as C0123ABCD, or a Discord ID, digits). 2 when
    the settings (or the settings file) are not valid; 1 when the persona store cannot be read."""
    platform = "discord" if channel.isdigit() else "slack"
    settings = ChannelSettings.from_environ(environ)  # ConfigError: the CLI prints it and exits 2
    place = Place(platform, channel, guild=guild, dm=dm or (platform == "slack" and channel.startswith("D")))

    async def persona_of() -> tuple[Persona | None, str | None]:
        try:
            return await settings.store.get(platform, place.persona_channel), None
        except StoreError as exc:
            return None, str(exc)
        finally:
            await settings.close()

    persona, error = asyncio.run(persona_of())
    effective = resolve(settings.config, settings.defaults, place, persona)
    where = f"{platform} channel {channel}" + (f" in {'team' if platform == 'slack' else 'server'} {guild}"
                                                if guild else "") + (" (a direct message)" if place.dm else "")
    print(f"engbot doctor: the settings of {where}")
    _line("settings file", settings.config_path or "none (ENGBOT_CONFIG is not set)")
    _line("personas kept in", settings.store.describe())
    sources = effective.sources
    prompt = effective.system_prompt if len(effective.system_prompt) <= 300 else effective.system_prompt[:300] + "…"
    _line("system prompt", repr(prompt), sources["system_prompt"])
    if effective.persona is not None and effective.persona.set_at:
        _line("persona set", time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(effective.persona.set_at)))
    _line("temperature", effective.params.temperature, sources["temperature"])
    _line("max new tokens", effective.params.max_new_tokens, sources["max_new_tokens"])
    _line("history", f"{effective.history_chars:,} characters", sources["history_chars"])
    _line("show thinking", effective.show_thinking, sources["show_thinking"])
    _line("model", effective.model, sources["model"])
    _line("allowed users", ", ".join(sorted(effective.allowed_users)) or "everyone", sources["allowed_users"])
    if platform == "discord":
        _line("allowed roles", ", ".join(sorted(effective.allowed_roles)) or "everyone", sources["allowed_roles"])
    budget = settings.budget_for(effective)
    _line("context", f"{budget.context_tokens:,} tokens; a persona may take up to "
          f"{budget.persona_tokens(effective.params.max_new_tokens):,}")
    if error is not None:
        print(f"FAIL: the persona could not be read: {error}")
        return 1
    print("OK")
    return 0


def describe_channels(settings: ChannelSettings) -> str:
    """For ``engbot doctor``: the settings file and where personas are kept (both checked by then)."""
    file = f"{settings.config_path} ({len(settings.config.scopes)} tables)" if settings.config_path else "none"
    return f"settings file {file}; personas in {settings.store.describe()}"
