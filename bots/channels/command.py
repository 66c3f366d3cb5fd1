"""The persona command, the same on every platform (Slack's ``/engbot persona ...``, Discord's ``/engbot persona``
group): set, show or reset the system prompt of the channel it is run in. Admins only; what it says, only the
admin who ran it reads.

    command = parse_command("persona set You answer in French.")
    text = await run_command(settings, place, command, user="U1", admin=True, ...)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from bots.channels.effective import Place
from bots.channels.lookup import ChannelSettings, PersonaTooLong
from bots.channels.store import StoreError
from bots.messages import Messages

log = logging.getLogger("engbot.channels")

Action = Literal["set", "show", "reset", "help"]


@dataclass(frozen=True, slots=True)
class PersonaCommand:
    action: Action
    text: str = ""


def parse_command(text: str) -> PersonaCommand:
    """``persona set <text>``, ``persona show``, ``persona reset``; anything else is ``help``."""
    words = text.strip().split(maxsplit=2)
    if len(words) >= 2 and words[0].lower() == "persona":
        action = words[1].lower()
        if action == "set":
            return PersonaCommand("set", words[2].strip() if len(words) > 2 else "")
        if action in ("show", "get"):
            return PersonaCommand("show")
        if action in ("reset", "clear", "remove"):
            return PersonaCommand("reset")
    return PersonaCommand("help")


def quoted(text: str, limit: int = 1500) -> str:
    """A persona as shown in a reply: a quote block, cut when long."""
    shown = text if len(text) <= limit else text[:limit].rstrip() + "…"
    return "\n".join("> " + line for line in shown.splitlines() or [""])


async def run_command(settings: ChannelSettings, place: Place, command: PersonaCommand, *, user: str, admin: bool,
                      admin_setting: str, command_name: str, mention: Callable[[str], str]) -> str:
    """Do what the command asks; the reply for the admin who ran it."""
    if command.action == "help":
        return Messages.PERSONA_USAGE.format(command=command_name)
    if not admin:
        log.info("persona command by %s in %s %s refused: not an admin (%s)", user, place.platform,
                 place.persona_channel, admin_setting)
        return Messages.PERSONA_ADMINS_ONLY.format(setting=admin_setting)
    try:
        if command.action == "set":
            if not command.text:
                return Messages.PERSONA_EMPTY.format(command=command_name)
            try:
                persona = await settings.set_persona(place, command.text, user)
            except PersonaTooLong as exc:
                return Messages.PERSONA_TOO_LONG.format(why=exc)
            return Messages.PERSONA_SET.format(chars=len(persona.text), quoted=quoted(persona.text))
        if command.action == "reset":
            if not await settings.reset_persona(place, user):
                return Messages.PERSONA_WAS_NONE
            source = (await settings.effective(place)).sources.get("system_prompt", "SYSTEM_PROMPT")
            return Messages.PERSONA_RESET.format(source=source)
        effective = await settings.effective(place)
        if effective.persona is None:
            return Messages.PERSONA_NONE.format(source=effective.sources.get("system_prompt", "SYSTEM_PROMPT"),
                                                quoted=quoted(effective.system_prompt))
        persona = effective.persona
        when = time.strftime(" on %Y-%m-%d", time.gmtime(persona.set_at)) if persona.set_at else ""
        return Messages.PERSONA_SHOW.format(who=mention(persona.set_by) if persona.set_by else "an admin",
                                            when=when, quoted=quoted(persona.text))
    except StoreError as exc:
        log.error("persona command in %s %s failed: %s", place.platform, place.persona_channel, exc)
        return Messages.PERSONA_STORE_FAILED
