"""Slack payloads to decisions and jobs, and replies to Web API arguments: pure functions, no network.

    event = event_of(body)                            # MalformedEvent when the envelope is not an Events API one
    message = parse_message(event, me)               # a SlackMessage, or Ignored(reason)
    decision = decide(message, me, policy)           # Ignore, Notice(text), CheckThread or Ask(prompt)
    job = build_job(message, thread_turns(history, message, question, me))

``adapter.py`` does the I/O around these; the tests feed them recorded payloads.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bots.conversation import Said, conversation
from bots.decisions import Ask, Ignore, Notice
from bots.messages import Messages
from bots.notes import answer_only
from bots.presses import Action, parse
from bots.sink import Control, Reply
from engine.types import Turn

PLATFORM = "slack"
# Message subtypes that carry something a person wrote; every other subtype (edits, deletions, joins, bot
# messages...) is bookkeeping and never triggers an answer.
USER_SUBTYPES = frozenset({"file_share", "thread_broadcast"})


class MalformedEvent(ValueError):
    """The payload does not have the shape Slack documents for the event; it is logged and skipped."""


@dataclass(frozen=True, slots=True)
class BotIdentity:
    """Who the bot is, as ``auth.test`` tells it."""

    user_id: str
    bot_id: str | None = None


@dataclass(frozen=True, slots=True)
class SlackMessage:
    """A message a person wrote, as far as the bot cares."""

    event_type: str  # "app_mention" or "message"
    channel: str
    ts: str
    user: str
    text: str  # Slack markup, as received
    thread_ts: str | None = None  # the thread's parent ts when the message is in a thread (or starts one)
    channel_type: str | None = None  # "im", "mpim", "channel", "group"; app_mention events carry none
    has_files: bool = False
    user_name: str | None = None  # the author's display name, when the payload carries their profile

    @property
    def key(self) -> tuple[str, str]:
        """What identifies one message across its deliveries (app_mention and message, retries)."""
        return self.channel, self.ts

    @property
    def reply_thread_ts(self) -> str:
        """Replies go into the message's thread, or start one under it."""
        return self.thread_ts or self.ts

    @property
    def in_thread(self) -> bool:
        """A reply inside a thread (not its parent, not a top-level message)."""
        return self.thread_ts is not None and self.thread_ts != self.ts

    @property
    def is_dm(self) -> bool:
        return self.channel_type == "im" or (self.channel_type is None and self.channel.startswith("D"))


@dataclass(frozen=True, slots=True)
class Ignored:
    """Not a message from a person (our own, another bot's, an edit...)."""

    reason: str


def team_of(body: Any) -> str | None:
    """The team of the person who wrote an event's message (what ``chat.startStream`` calls the recipient's
    team): the message's ``user_team`` or ``team``, else the team the app is installed in (``authorizations``,
    ``team_id``), else the organization of an org-wide install."""
    if not isinstance(body, Mapping):
        return None
    event = body.get("event")
    authorizations = body.get("authorizations")
    first = authorizations[0] if isinstance(authorizations, list) and authorizations else None
    places: list[Any] = [event.get("user_team"), event.get("team")] if isinstance(event, Mapping) else []
    if isinstance(first, Mapping):
        places.append(first.get("team_id"))
    places += [body.get("team_id"), body.get("enterprise_id")]
    if isinstance(first, Mapping):
        places.append(first.get("enterprise_id"))
    return next((p for p in places if isinstance(p, str) and p), None)


def event_of(body: Any) -> Mapping[str, Any]:
    """The ``event`` of an Events API callback body."""
    if not isinstance(body, Mapping):
        raise MalformedEvent(f"the body is a {type(body).__name__}, not an object")
    event = body.get("event")
    if not isinstance(event, Mapping):
        raise MalformedEvent("the body has no event object")
    return event


def parse_message(event: Mapping[str, Any], me: BotIdentity) -> SlackMessage | Ignored:
    """Read an ``app_mention`` or ``message`` event. Raises ``MalformedEvent`` when fields a person's message
    always has are missing or of the wrong type."""
    kind = event.get("type")
    if kind not in ("app_mention", "message"):
        return Ignored(f"event type {kind!r}")
    subtype = event.get("subtype")
    if subtype is not None and subtype not in USER_SUBTYPES:
        return Ignored(f"message subtype {subtype!r}")
    user, bot_id = event.get("user"), event.get("bot_id")
    if (user is not None and user == me.user_id) or (bot_id is not None and bot_id == me.bot_id):
        return Ignored("our own message")
    if bot_id is not None:
        return Ignored("another bot's message")
    channel, ts = _field(event, "channel"), _field(event, "ts")
    if not isinstance(user, str) or not user:
        raise MalformedEvent("the message has no user")
    text = event.get("text") or ""
    if not isinstance(text, str):
        raise MalformedEvent("the message text is not a string")
    thread_ts = event.get("thread_ts")
    if thread_ts is not None and not isinstance(thread_ts, str):
        raise MalformedEvent("thread_ts is not a string")
    channel_type = event.get("channel_type")
    files = event.get("files")
    return SlackMessage(
        event_type=str(kind), channel=channel, ts=ts, user=user, text=text, thread_ts=thread_ts or None,
        channel_type=channel_type if isinstance(channel_type, str) else None,
        has_files=isinstance(files, list) and bool(files), user_name=profile_name(event),
    )


def profile_name(message: Mapping[str, Any]) -> str | None:
    """The author's name from the ``user_profile`` Slack adds to messages people post (display name, else real
    name); None when the message carries no profile. Needs no ``users:read`` scope."""
    profile = message.get("user_profile")
    if not isinstance(profile, Mapping):
        return None
    for key in ("display_name", "real_name", "name"):
        value = profile.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _field(event: Mapping[str, Any], name: str) -> str:
    value = event.get(name)
    if not isinstance(value, str) or not value:
        raise MalformedEvent(f"the message has no {name}")
    return value


# ---- Slack markup -> plain text for the model ----

_MARKUP = re.compile(r"<([^<>\n]+)>")
_ESCAPES = {"&lt;": "<", "&gt;": ">", "&amp;": "&"}


def mentions(text: str, user_id: str) -> bool:
    """Whether ``text`` mentions the user (``<@U123>`` or ``<@U123|name>``)."""
    return f"<@{user_id}>" in text or f"<@{user_id}|" in text


def plain_text(text: str, strip_user: str | None = None, names: Mapping[str, str] | None = None) -> str:
    """Slack markup as plain text: ``<@U1|ann>`` becomes ``@ann`` (``<@U1>`` ``@`` and the name ``names`` has
    for U1, else ``@U1``), ``<#C1|general>`` ``#general``, ``<https://x|label>`` ``label (https://x)``, entities
    are unescaped; mentions of ``strip_user`` vanish."""
    names = names or {}

    def replace(match: re.Match[str]) -> str:
        inner = match.group(1)
        target, _, label = inner.partition("|")
        if target.startswith("@"):
            return "@" + (label or names.get(target[1:], target[1:]))
        if target.startswith("#"):
            return "#" + (label or target[1:])
        if target.startswith("!"):
            if label:  # <!subteam^S1|@team>, <!date^...|fallback>
                return label
            return "@" + target[1:].split("^", 1)[0]
        if target.startswith("mailto:"):
            return label or target[len("mailto:"):]
        if not label or label == target or label == re.sub(r"^[a-z]+://", "", target):
            return label or target
        return f"{label} ({target})"

    if strip_user is not None:  # "<@BOT>: question", "hi <@BOT>, question": the punctuation goes with it
        text = re.sub(rf"<@{re.escape(strip_user)}(?:\|[^<>]*)?>[,:]?", "", text)
    text = _MARKUP.sub(replace, text)
    text = re.sub(r"&(lt|gt|amp);", lambda m: _ESCAPES[m.group(0)], text)
    text = re.sub(r"[ \t]{2,}", " ", text)
    return text.strip()


# ---- decisions ----


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    """Which messages the bot answers besides mentions and DMs, and who may ask (empty set: everyone)."""

    follow_threads: bool = True
    allowed_channels: frozenset[str] = frozenset()
    allowed_users: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class CheckThread:
    """A thread reply without a mention: answer only if the bot answered in that thread before."""


Decision = Ignore | CheckThread | Notice | Ask


def decide(message: SlackMessage, me: BotIdentity, policy: AccessPolicy, *,
           thread_is_ours: bool | None = None) -> Decision:
    """What to do with a message. A thread reply without a mention first gives ``CheckThread``; call again with
    ``thread_is_ours`` once that is known."""
    if message.is_dm:
        trigger = "DM"
    elif message.event_type == "app_mention" or mentions(message.text, me.user_id):
        trigger = "mention"
    elif policy.follow_threads and message.in_thread:
        if policy.allowed_channels and message.channel not in policy.allowed_channels:
            return Ignore("a thread in a channel the bot does not answer in")
        if re.search(r"<@[UW]", message.text):
            return Ignore("a thread reply addressed to someone else")
        if thread_is_ours is None:
            return CheckThread()
        if not thread_is_ours:
            return Ignore("a thread the bot has not answered in")
        trigger = "thread follow-up"
    else:
        return Ignore("neither a mention, a DM nor a followed thread")
    if policy.allowed_channels and not message.is_dm and message.channel not in policy.allowed_channels:
        return Ignore(f"{trigger} in channel {message.channel}, which is not in SLACK_ALLOWED_CHANNELS", log=True)
    if policy.allowed_users and message.user not in policy.allowed_users:
        return Ignore(f"{trigger} from user {message.user}, who is not in SLACK_ALLOWED_USERS", log=True)
    question = plain_text(message.text, me.user_id)
    if not question and not message.has_files:
        return Notice(Messages.HELP)
    return Ask(question)  # (with files and no text: the files are the question)


# ---- thread history -> conversation -> job ----


def _ts_key(ts: str) -> tuple[int, int]:
    seconds, _, fraction = ts.partition(".")
    try:
        return int(seconds), int(fraction.ljust(6, "0")[:6] or 0)
    except ValueError:
        return (0, 0)


def _status_pattern() -> re.Pattern[str]:
    fixed = [Messages.THINKING, Messages.HELP, Messages.BUSY, Messages.NO_TEXT, Messages.UNAVAILABLE,
             Messages.EMPTY_ANSWER, Messages.RETRACTED, Messages.STOPPED, Messages.SUMMARY_READING,
             Messages.SUMMARY_EMPTY]
    templates = [Messages.QUEUED, Messages.RATE_LIMITED, Messages.SUMMARY_PARTS, Messages.SUMMARY_COMBINING,
                 Messages.FILES_UNREADABLE + "{notes}"]
    parts = [re.escape(t) for t in fixed]
    for template in templates:
        parts.append(re.sub(r"\\\{\w+\\\}", r".*?", re.escape(template)))
    return re.compile("^(?:" + "|".join(parts) + ")$", re.DOTALL)


_STATUS = _status_pattern()
_FAILURE_NOTE = "⚠️"


def bot_text_for_history(text: str) -> str:
    """What the model should see of one of its own earlier messages: the answer without the streaming cursor
    or a failure note; nothing for status messages (placeholders, help, busy...)."""
    text = text.removesuffix(Messages.CURSOR).strip().removesuffix("\n\n" + Messages.STOPPED)
    if _STATUS.match(text) or text.startswith(_FAILURE_NOTE):
        return ""
    note = text.find("\n\n" + _FAILURE_NOTE)
    return answer_only(text[:note] if note >= 0 else text)


def is_from_bot(message: Mapping[str, Any], me: BotIdentity) -> bool:
    return message.get("user") == me.user_id or (me.bot_id is not None and message.get("bot_id") == me.bot_id)


SUMMARY_EVENT = "engbot_summary"  # the metadata event type of a thread summary's message


def bot_in_thread(history: Sequence[Any], me: BotIdentity) -> bool:
    """Whether the bot answered in a thread (``conversations.replies`` messages). A summary it posted there on
    request (its message's metadata says so) does not make the thread one the bot follows."""
    return any(isinstance(m, Mapping) and is_from_bot(m, me) and _mapping(m.get("metadata")).get("event_type")
               != SUMMARY_EVENT for m in history)


def speaker_names(history: Sequence[Any], message: SlackMessage | None = None) -> dict[str, str]:
    """User id -> name, from the profiles the thread's messages carry (and the message being answered)."""
    names: dict[str, str] = {}
    for item in history:
        if isinstance(item, Mapping) and isinstance(item.get("user"), str) and (name := profile_name(item)):
            names[item["user"]] = name
    if message is not None and message.user_name:
        names[message.user] = message.user_name
    return names


def thread_turns(history: Sequence[Any], message: SlackMessage, question: str, me: BotIdentity, *,
                 allowed_users: frozenset[str] = frozenset(), max_chars: int = 24_000) -> tuple[Turn, ...]:
    """The conversation for ``message``: the thread's earlier messages (the bot's as assistant turns, other
    bots' left out), then ``question``. With several people in the thread, each one's messages carry their
    name (from the messages' profiles, else ``@U0123ABCD``). With ``allowed_users`` (SLACK_ALLOWED_USERS), the
    messages of anyone else are left out: they never reach the model. Messages at or after ``message`` are
    left out: the history may or may not hold the message itself, and our own placeholder may already be
    there."""
    now = _ts_key(message.ts)
    names = speaker_names(history, message)
    said: list[Said] = []
    for item in history:
        if not isinstance(item, Mapping):
            continue
        ts, text, user = item.get("ts"), item.get("text"), item.get("user")
        if not isinstance(ts, str) or not isinstance(text, str) or _ts_key(ts) >= now:
            continue
        if item.get("subtype") == "assistant_app_thread":  # the parent Slack posts for an assistant thread
            continue
        if item.get("subtype") not in (None, *USER_SUBTYPES) and not is_from_bot(item, me):
            continue
        if is_from_bot(item, me):
            said.append(Said(plain_text(bot_text_for_history(text), names=names), None))
        elif item.get("bot_id") is None and isinstance(user, str) and (not allowed_users or user in allowed_users):
            said.append(Said(plain_text(text, me.user_id, names), user, names.get(user, "@" + user)))
    said.append(Said(question, message.user, names.get(message.user, "@" + message.user)))
    return conversation(said, max_chars=max_chars)


def find_post(history: Sequence[Any], me: BotIdentity, text: str, *, after: str,
              known: Callable[[str], bool] = lambda ts: False) -> str | None:
    """The ts of the bot's message in ``history`` that shows ``text``, was posted after the message ``after``
    and is not ``known`` (a post whose ts the adapter has): where a ``chat.postMessage`` whose answer was lost
    landed, if it did. The newest such message, or None."""
    floor = _ts_key(after) if after else (0, 0)
    found = [item["ts"] for item in history
             if isinstance(item, Mapping) and is_from_bot(item, me) and isinstance(item.get("ts"), str)
             and _ts_key(item["ts"]) > floor and not known(item["ts"])
             and isinstance(item.get("text"), str) and item["text"].strip() == text.strip()]
    return str(found[-1]) if found else None


def source(message: SlackMessage) -> str:
    """What identifies a question across Slack's deliveries of it: its channel and ts."""
    return f"{message.channel}:{message.ts}"


# ---- replies -> Web API arguments ----


def post_args(channel: str, thread_ts: str, reply: Reply, metadata: Mapping[str, Any] | None = None
              ) -> dict[str, Any]:
    """``chat.postMessage`` arguments for a reply in a thread (with message ``metadata``, if any)."""
    args: dict[str, Any] = {"channel": channel, "thread_ts": thread_ts, "text": reply.text, "unfurl_links": False,
                            "unfurl_media": False}
    if metadata:
        args["metadata"] = dict(metadata)
    if reply.controls:
        args["blocks"] = blocks(reply)
    return args


def update_args(channel: str, ts: str, reply: Reply, *, clear_blocks: bool = False) -> dict[str, Any]:
    """``chat.update`` arguments to replace one of the bot's messages. A message that showed controls needs
    ``blocks`` sent every time (``clear_blocks``: an empty list takes them away); else ``text`` is enough."""
    args: dict[str, Any] = {"channel": channel, "ts": ts, "text": reply.text}
    if reply.controls or clear_blocks:
        args["blocks"] = blocks(reply) if reply.controls else []
    return args


SECTION_LIMIT = 3000  # characters of a section block's text
BUTTON_LABEL_LIMIT = 75


FEEDBACK_VALUES = {Action.GOOD: "good", Action.BAD: "bad"}


def blocks(reply: Reply) -> list[dict[str, Any]]:
    """A reply with controls as Block Kit: its text in a section (``text`` stays as the notification fallback),
    then its controls (``control_blocks``)."""
    return [{"type": "section", "text": {"type": "mrkdwn", "text": reply.text[:SECTION_LIMIT] or " "}},
            *control_blocks(reply.controls)]


def control_blocks(controls: Sequence[Control]) -> list[dict[str, Any]]:
    """Controls as Block Kit: an ``actions`` block with one button per control, and the thumbs up and down as
    Slack's own ``feedback_buttons`` in a ``context_actions`` block (one element: ``engbot:feedback:<job>``,
    value good or bad). (Under a streamed answer, ``chat.stopStream`` shows them below its text.)"""
    buttons, feedback = [], {}
    for control in controls:
        if control.action in FEEDBACK_VALUES:
            feedback[control.action] = control
            continue
        button: dict[str, Any] = {
            "type": "button", "action_id": control.custom_id[:255], "value": control.value[:2000],
            "text": {"type": "plain_text", "text": control.label[:BUTTON_LABEL_LIMIT], "emoji": True},
        }
        if control.style != "default":
            button["style"] = control.style
        buttons.append(button)
    out: list[dict[str, Any]] = []
    if buttons:
        out.append({"type": "actions", "elements": buttons})
    if len(feedback) == 2:
        good, bad = feedback[Action.GOOD], feedback[Action.BAD]
        out.append({"type": "context_actions", "elements": [{
            "type": "feedback_buttons", "action_id": f"engbot:feedback:{good.value}"[:255],
            "positive_button": {"text": {"type": "plain_text", "text": good.label}, "value": "good",
                                "accessibility_label": "This answer was good"},
            "negative_button": {"text": {"type": "plain_text", "text": bad.label}, "value": "bad",
                                "accessibility_label": "This answer was not good"},
        }]})
    return out


# ---- presses ----


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


@dataclass(frozen=True, slots=True)
class SlackPress:
    """A press on one of the bot's buttons (a ``block_actions`` payload), as far as the bot cares."""

    action: Action
    job_id: str
    user: str
    channel: str
    message_ts: str
    thread_ts: str | None


def parse_press(body: Any) -> SlackPress | None:
    """The press in a ``block_actions`` payload; None when it is not a press on one of our buttons (or not a
    well-formed one)."""
    if not isinstance(body, Mapping) or body.get("type") != "block_actions":
        return None
    actions, user = body.get("actions"), body.get("user")
    container, channel, message = (_mapping(body.get(key)) for key in ("container", "channel", "message"))
    if not (isinstance(actions, list) and actions and isinstance(actions[0], Mapping) and isinstance(user, Mapping)):
        return None
    action_id, value = actions[0].get("action_id"), actions[0].get("value")
    if not isinstance(action_id, str):
        return None
    if action_id.startswith("engbot:feedback:"):
        job = action_id.removeprefix("engbot:feedback:")
        kind = {"good": Action.GOOD, "bad": Action.BAD}.get(str(value))
        parsed = (kind, job) if kind is not None and parse(f"engbot:{kind}:{job}") else None
    else:
        parsed = parse(action_id)
    user_id = user.get("id")
    channel_id = channel.get("id") or container.get("channel_id")
    message_ts = container.get("message_ts") or message.get("ts")
    if parsed is None or not all(isinstance(v, str) and v for v in (user_id, channel_id, message_ts)):
        return None
    thread_ts = message.get("thread_ts")
    return SlackPress(parsed[0], parsed[1], str(user_id), str(channel_id), str(message_ts),
                      thread_ts if isinstance(thread_ts, str) else None)
