"""Discord attachments as ``bots.files`` reads them: ``attachment.read()`` (the size Discord declares is checked
first). Attachment URLs are signed and expire: a download refused with 404 or 403 re-fetches the message for fresh
links and tries once more."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import discord

from bots.files.read import FetchError, Incoming
from bots.files.sniff import size_text

log = logging.getLogger("engbot.discord")

Refetch = Callable[[], Awaitable[discord.Message | None]]


def incoming(attachments: list[discord.Attachment], refetch: Refetch | None = None) -> list[Incoming]:
    """The attachments of a message (``refetch`` gets the message again) or of a command (no refetch)."""
    return [Incoming(a.filename, a.size, a.content_type or "", _fetcher(a, refetch)) for a in attachments]


def _fetcher(attachment: discord.Attachment, refetch: Refetch | None) -> Callable[[int], Awaitable[bytes]]:
    async def fetch(max_bytes: int) -> bytes:
        if attachment.size > max_bytes:
            raise FetchError(f"it is {size_text(attachment.size)}: files over {size_text(max_bytes)} are not read")
        try:
            return await attachment.read()
        except (discord.NotFound, discord.Forbidden) as exc:
            if refetch is None:
                raise FetchError("Discord no longer serves it (its link expired)") from None
            log.info("attachment %s: %s; fetching its message again for a fresh link", attachment.id, exc.status)
        except discord.HTTPException as exc:
            log.warning("downloading attachment %s failed: %s", attachment.id, exc)
            raise FetchError("it could not be downloaded from Discord") from None
        try:
            message = await refetch()
        except discord.HTTPException:
            message = None
        fresh = next((a for a in message.attachments if a.id == attachment.id), None) if message else None
        if fresh is None:
            raise FetchError("it is no longer there")
        try:
            return await fresh.read()
        except discord.HTTPException as exc:
            log.warning("downloading attachment %s failed again: %s", attachment.id, exc)
            raise FetchError("it could not be downloaded from Discord") from None

    return fetch
