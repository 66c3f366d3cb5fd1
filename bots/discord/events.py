"""Discord messages and commands -> decisions and jobs. Pure: no network, tested on raw gateway payloads.

The adapter (``adapter.py``) asks ``decide_message`` or ``decide_command`` what to do with an event,
then fetches the context this module names, and builds the job with ``turns_for``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import discord

from bots.conversation import Said, allowed, conversation
from bots.decisions import Ask, Ignore, Notice
from bots.messages import Messages
from bots.notes import answer_only
from bots.presses import Press, parse
from engine.types import Turn

PLATFORM = "discord"
THREAD_NAME_MAX = 90  # Discord allows 100
ANSWERABLE_TYPES = (discord.MessageType.default, discord.MessageType.reply)
# Everything the bot says about itself: left out of the conversation the model sees.
_NOTICES = tuple(
    text.split("{", 1)[0]
    for text in (Messages.HELP, Messages.THINKING, Messages.QUEUED, Messages.BUSY, Messages.RATE_LIMITED,
                 Messages.EMPTY_ANSWER, Messages.UNAVAILABLE, Messages.NO_TEXT, Messages.NOT_ALLOWED, Messages.MOVED,
                 Messages.RETRACTED, Messages.STOPPED, Messages.SUMMARY_READING, Messages.SUMMARY_PARTS,
                 Messages.SUMMARY_COMBINING, Messages.SUMMARY_EMPTY, Messages.FILES_UNREADABLE, "⚠️")
)
_STOPPED_BY = re.compile("\n\n" + re.escape(Messages.STOPPED_BY).replace(re.escape("{who}"), "[^\n]*") + "$")
_MENTION = re.compile(r"<(@!?|@&|#)(\d+)>")
_EMOJI = re.compile(r"<a?:(\w+):\d+>")
_SPACES = re.compile(r"[ \t]{2,}")


@dataclass(frozen=True, slots=True)
class Access:
    """Allow-lists of ids (as strings); an empty list allows everyone. A thread counts as its parent channel
    too. A DM has no guild, channel list entry or roles: any non-empty list keeps DMs out."""

    guilds: frozenset[str] = frozenset()
    channels: frozenset[str] = frozenset()
    roles: frozenset[str] = frozenset()

    def refusal(self, guild_id: int | None, channel_ids: Iterable[int], role_ids: Iterable[int]) -> str | None:
        """None when allowed, else the name of the setting that refuses."""
        if not allowed(None if guild_id is None else str(guild_id), self.guilds):
            return "DISCORD_ALLOWED_GUILDS"
        if self.channels and not self.channels & {str(c) for c in channel_ids}:
            return "DISCORD_ALLOWED_CHANNELS"
        if self.roles and not self.roles & {str(r) for r in role_ids}:
            return "DISCORD_ALLOWED_ROLES"
        return None


Decision = Ignore | Notice | Ask


@dataclass(frozen=True, slots=True)
class Names:
    """Display names for the ids a text mentions: ``<@id>``, ``<@&id>``, ``<#id>``."""

    users: Mapping[int, str] = field(default_factory=dict)
    roles: Mapping[int, str] = field(default_factory=dict)
    channels: Mapping[int, str] = field(default_factory=dict)

    @classmethod
    def of(cls, message: discord.Message) -> Names:
        """The names a message carries with it (its resolved mentions)."""
        return cls(
            users={u.id: u.display_name for u in message.mentions},
            roles={r.id: r.name for r in message.role_mentions},
            channels={c.id: getattr(c, "name", "channel") for c in message.channel_mentions},
        )

    @classmethod
    def lookup(cls, guild: discord.Guild | None, ids: Sequence[int]) -> Names:
        """Names from a guild's cache, for text that came without resolved mentions (a slash command option)."""
        if guild is None:
            return cls()
        users = {i: m.display_name for i in ids if (m := guild.get_member(i)) is not None}
        roles = {i: r.name for i in ids if (r := guild.get_role(i)) is not None}
        channels = {i: c.name for i in ids if (c := guild.get_channel_or_thread(i)) is not None}
        return cls(users, roles, channels)


def mentioned_ids(text: str) -> list[int]:
    """Every id a text mentions: users, roles and channels."""
    return [int(m.group(2)) for m in _MENTION.finditer(text)]


def readable(text: str, bot_id: int, names: Names) -> str:
    """Text as a person reads it: the bot's own mention removed, other mentions as ``@name``/``#name``, custom
    emoji as ``:name:``."""

    def replace(m: re.Match[str]) -> str:
        kind, ident = m.group(1), int(m.group(2))
        if kind == "#":
            return "#" + names.channels.get(ident, "channel")
        if kind == "@&":
            return "@" + names.roles.get(ident, "role")
        if ident == bot_id:
            return ""
        return "@" + names.users.get(ident, "user")

    text = _EMOJI.sub(r":\1:", _MENTION.sub(replace, text))
    return _SPACES.sub(" ", text).strip()


def channel_ids(channel: object) -> list[int]:
    """The ids an allow-list may name for a channel: its own, and its parent's for a thread."""
    ids = [getattr(channel, "id", 0)]
    if isinstance(channel, discord.Thread):
        ids.append(channel.parent_id)
    return [i for i in ids if i]


def role_ids(user: discord.abc.User) -> list[int]:
    return [r.id for r in user.roles] if isinstance(user, discord.Member) else []


def addresses_bot(message: discord.Message, bot_id: int) -> bool:
    """The message mentions the bot in its text, or replies to one of its messages (not @everyone)."""
    replied = message.reference.resolved if message.reference else None
    return bot_id in message.raw_mentions or (isinstance(replied, discord.Message) and replied.author.id == bot_id)


def decide_message(message: discord.Message, bot_id: int, access: Access, *, bot_thread: bool) -> Decision:
    """What to do with a message: answer DMs, mentions, and every message in a thread the bot created."""
    if message.author.id == bot_id:
        return Ignore("own message")
    if message.author.bot:
        return Ignore("from a bot")  # answering bots risks reply loops
    if message.type not in ANSWERABLE_TYPES:
        return Ignore(f"a {message.type.name} message")
    is_dm = message.guild is None
    mentioned = addresses_bot(message, bot_id)
    if not (is_dm or mentioned or bot_thread):
        return Ignore("not addressed to the bot")
    refusal = access.refusal(message.guild.id if message.guild else None, channel_ids(message.channel),
                             role_ids(message.author))
    if refusal:
        return Ignore(f"not allowed by {refusal}", log=True)
    prompt = readable(message.content, bot_id, Names.of(message))
    if prompt or message.attachments:
        return Ask(prompt)  # (attachments alone: the files are the question)
    if message.stickers:
        return Notice(Messages.NO_TEXT)
    if is_dm or mentioned:
        return Notice(Messages.HELP)
    # in the bot's thread without the message-content intent, every other user's message reads as empty
    return Ignore("no readable text")


def decide_command(prompt: str, access: Access, *, guild_id: int | None, channels: Iterable[int],
                   roles: Iterable[int]) -> Notice | Ask:
    """What to do with ``/ask prompt:...``: refusals are notices too (ephemeral, seen only by the user)."""
    refusal = access.refusal(guild_id, channels, roles)
    if refusal:
        return Notice(Messages.NOT_ALLOWED, reason=f"not allowed by {refusal}")
    prompt = prompt.strip()
    return Ask(prompt) if prompt else Notice(Messages.HELP)


def press_of(custom_id: str, user_id: int, roles: Iterable[int], admin_roles: Container[str]) -> Press | None:
    """The press a button's ``custom_id`` asks for; None for an id that is not one of ours (ignored). ``roles``:
    the presser's role ids (none in a DM); holding one of ``admin_roles`` makes them an admin."""
    parsed = parse(custom_id)
    if parsed is None:
        return None
    action, job_id = parsed
    return Press(action, job_id, str(user_id), admin=any(str(r) in admin_roles for r in roles))


def bot_text(text: str) -> str:
    """The answer part of a message the bot posted: no notices, cursor, notes, thinking or failure note."""
    text = _STOPPED_BY.sub("", text.removesuffix(Messages.CURSOR).strip().removesuffix("\n\n" + Messages.STOPPED))
    if text.startswith(_NOTICES):
        return ""
    return answer_only(text.split("\n\n⚠️", 1)[0])


def allowed_authors(access: Access, roles: Mapping[int, Collection[int]]) -> frozenset[int] | None:
    """Whose messages may reach the model: None for everyone (DISCORD_ALLOWED_ROLES is empty), else the authors
    holding an allowed role; ``roles`` maps author ids to their role ids."""
    if not access.roles:
        return None
    return frozenset(author for author, ids in roles.items() if access.roles & {str(i) for i in ids})


def said_of(messages: Iterable[discord.Message], bot_id: int, *,
            names: Callable[[discord.Message], Names] = Names.of,
            authors: Container[int] | None = None) -> list[Said]:
    """Messages as the model may read them, oldest first: the bot's answers (without notes and thinking), and
    what people wrote (only ``authors``, ids, when not None); other bots and Discord's notices left out."""
    said: list[Said] = []
    for m in messages:
        if m.author.id == bot_id:
            said.append(Said(bot_text(m.content), None))
        elif m.type in ANSWERABLE_TYPES and not m.author.bot and (authors is None or m.author.id in authors):
            said.append(Said(readable(m.content, bot_id, names(m)), str(m.author.id), m.author.display_name))
    return said


def turns_for(earlier: Iterable[discord.Message], prompt: str, bot_id: int, asker: discord.abc.User, *,
              names: Callable[[discord.Message], Names] = Names.of,
              authors: Container[int] | None = None, max_chars: int = 24_000) -> tuple[Turn, ...]:
    """The conversation for a job: ``earlier`` messages oldest first (the bot's as assistant turns), then
    ``asker``'s ``prompt``. With several people, each one's messages carry their display name. Only messages of
    ``authors`` (ids; None: everyone) are kept: the model never sees what anyone else wrote."""
    said = said_of(earlier, bot_id, names=names, authors=authors)
    said.append(Said(prompt, str(asker.id), asker.display_name))
    return conversation(said, max_chars=max_chars)


def thread_name(prompt: str) -> str:
    """A thread title from the question: its first line, cut at a word within Discord's limit."""
    line = " ".join(prompt.split("\n", 1)[0].split()).strip("`*_~# ")
    if len(line) > THREAD_NAME_MAX:
        cut = line.rfind(" ", 0, THREAD_NAME_MAX)
        line = line[: cut if cut > THREAD_NAME_MAX // 2 else THREAD_NAME_MAX].rstrip() + "…"
    return line or "engbot"


PERMISSIONS = discord.Permissions(
    view_channel=True, send_messages=True, send_messages_in_threads=True, create_public_threads=True,
    read_message_history=True,
)
SCOPES = ("bot", "applications.commands")


def invite_url(application_id: int) -> str:
    """The OAuth2 URL that adds the bot to a server with the permissions it needs, and nothing more."""
    return discord.utils.oauth_url(application_id, permissions=PERMISSIONS, scopes=SCOPES)
