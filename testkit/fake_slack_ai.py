"""The fake Slack's AI surface (``FakeSlack.ai``): ``chat.startStream`` / ``appendStream`` / ``stopStream`` with
their error codes, building the message they stream (so ``thread()``, ``bot_messages()`` and ``wait_final()``
work on its final text), ``assistant.threads.setStatus`` / ``setSuggestedPrompts`` / ``setTitle`` (recorded),
and the events a person's actions send (``assistant_thread_started``, ``app_home_opened``).

    slack = FakeSlack(rate_limits=stream_tiers(scale=0.1))   # tier 2 / tier 4, in a tenth of the time
    await slack.push(slack.ai.thread_started(user="U0001"))  # the user opened the assistant container
    slack.ai.user_stops(ts)                                  # the user pressed Slack's stop on a streaming message
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from testkit.fake_slack import FakeSlack

TIER_2 = (20, 60.0)  # chat.startStream, chat.stopStream: 20 a minute
TIER_4 = (100, 60.0)  # chat.appendStream: 100 a minute
MARKDOWN_LIMIT = 12_000  # characters of markdown_text in one call


def stream_tiers(scale: float = 1.0) -> dict[str, tuple[int, float]]:
    """The streaming methods' rate tiers for ``FakeSlack(rate_limits=...)``, their windows scaled by ``scale`` (the
    tests compress time). Retry-After stays whole seconds, as Slack sends it."""
    return {"chat.startStream": (TIER_2[0], TIER_2[1] * scale), "chat.stopStream": (TIER_2[0], TIER_2[1] * scale),
            "chat.appendStream": (TIER_4[0], TIER_4[1] * scale)}


@dataclass
class Stream:
    """A streamed message: ``state`` is streaming, stopped (by the app), stopped_by_user (Slack's stop button),
    expired (Slack ended it), or edited (changed with chat.update after it ended)."""

    channel: str
    ts: str
    thread_ts: str
    recipient_user_id: str | None
    recipient_team_id: str | None
    state: str = "streaming"
    appends: int = 0
    started_at: float = field(default_factory=time.monotonic)


class FakeAiSurface:
    """See the module docstring. Answers for ``FakeSlack._api`` (methods named ``_<method with _>``)."""

    def __init__(self, slack: FakeSlack, *, max_stream_text: int = 40_000) -> None:
        self.slack = slack
        self.max_stream_text = max_stream_text  # a streamed message longer than this: msg_too_long
        self.streams: dict[str, Stream] = {}  # ts -> the stream that made the message
        self.statuses: list[dict[str, Any]] = []  # every setStatus: channel_id, thread_ts, status, loading_messages
        self.status: dict[tuple[str, str], str] = {}  # (channel, thread) -> the status shown now
        self.suggested: list[dict[str, Any]] = []  # every setSuggestedPrompts: channel_id, thread_ts, prompts
        self.titles: dict[tuple[str, str], str] = {}  # (channel, thread) -> title

    # ---- what tests arrange ----

    def thread_started(self, *, user: str = "U0001", channel: str = "D0001",
                       context_channel: str | None = "C0001") -> dict[str, Any]:
        """The ``assistant_thread_started`` event of a user opening the assistant container (a new thread, whose
        parent Slack posts itself)."""
        ts = self.slack.next_ts()
        self.slack.messages[channel].append({"type": "message", "subtype": "assistant_app_thread", "user":
                                             self.slack.bot_user_id, "text": "New chat", "ts": ts,
                                             "team": self.slack.team_id})
        context: dict[str, Any] = {"team_id": self.slack.team_id, "enterprise_id": None}
        if context_channel:
            context["channel_id"] = context_channel
        return {"type": "assistant_thread_started", "event_ts": self.slack.next_ts(), "assistant_thread": {
            "user_id": user, "context": context, "channel_id": channel, "thread_ts": ts}}

    def home_opened(self, *, user: str = "U0001", channel: str = "D0001", tab: str = "messages") -> dict[str, Any]:
        """The ``app_home_opened`` event of a user opening one of the app's tabs (``messages``: the agent view)."""
        return {"type": "app_home_opened", "user": user, "channel": channel, "tab": tab,
                "event_ts": self.slack.next_ts()}

    def user_stops(self, ts: str) -> None:
        """The user pressed Slack's own stop button on a streaming message: later calls get ``stopped_by_user``."""
        self.streams[ts].state = "stopped_by_user"
        self.slack.changed()

    def expire(self, ts: str) -> None:
        """Slack ended a stream itself: later calls get ``message_not_in_streaming_state``."""
        self.streams[ts].state = "expired"
        self.slack.changed()

    # ---- what tests inspect ----

    def streaming(self, ts: str) -> bool:
        """Whether the message is a stream that has not reached its final state yet (still streaming, or stopped
        by the user and not yet given its final text by the app)."""
        stream = self.streams.get(ts)
        return stream is not None and stream.state in ("streaming", "stopped_by_user", "expired")

    def statuses_in(self, thread_ts: str, channel: str = "C0001") -> list[str]:
        return [s["status"] for s in self.statuses if s["thread_ts"] == thread_ts and s["channel_id"] == channel]

    # ---- hooks of FakeSlack ----

    def refuses_update(self, ts: str) -> str | None:
        """chat.update of a message that is still streaming is refused."""
        stream = self.streams.get(ts)
        return "cant_update_message" if stream is not None and stream.state == "streaming" else None

    def updated(self, ts: str) -> None:
        stream = self.streams.get(ts)
        if stream is not None and stream.state != "streaming":
            stream.state = "edited"

    def replied(self, channel: str, thread_ts: str | None) -> None:
        """The app posted in a thread: Slack clears the thread's status."""
        if thread_ts is not None:
            self.status.pop((channel, thread_ts), None)

    # ---- the Web API ----

    async def _chat_startStream(self, args: dict[str, Any]) -> dict[str, Any]:
        channel, thread_ts = str(args.get("channel") or ""), str(args.get("thread_ts") or "")
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        if not thread_ts:
            return {"ok": False, "error": "invalid_arguments"}
        if not channel.startswith("D"):  # outside DMs the recipient must be named
            if not args.get("recipient_team_id"):
                return {"ok": False, "error": "missing_recipient_team_id"}
            if not args.get("recipient_user_id"):
                return {"ok": False, "error": "missing_recipient_user_id"}
        if any(s.state == "streaming" and s.channel == channel and s.thread_ts == thread_ts
               for s in self.streams.values()):
            return {"ok": False, "error": "streaming_state_conflict"}  # one stream at a time in a thread
        text, error = _text_of(args)
        if error:
            return {"ok": False, "error": error}
        ts = self.slack.next_ts()
        message: dict[str, Any] = {"type": "message", "user": self.slack.bot_user_id, "bot_id": self.slack.bot_id,
                                   "text": text, "ts": ts, "thread_ts": thread_ts, "team": self.slack.team_id}
        self.slack.messages[channel].append(message)
        self.streams[ts] = Stream(channel, ts, thread_ts, args.get("recipient_user_id"),
                                  args.get("recipient_team_id"))
        self.replied(channel, thread_ts)
        self.slack.echo_message(message, channel)
        return {"ok": True, "channel": channel, "ts": ts}

    async def _chat_appendStream(self, args: dict[str, Any]) -> dict[str, Any]:
        stream, message, error = self._streaming(args)
        if error:
            return {"ok": False, "error": error}
        assert stream is not None and message is not None
        text, error = _text_of(args)
        if error or not text:
            return {"ok": False, "error": error or "invalid_arguments"}
        if len(message["text"]) + len(text) > self.max_stream_text:
            return {"ok": False, "error": "msg_too_long"}
        message["text"] += text
        stream.appends += 1
        self.slack.changed()
        return {"ok": True, "channel": stream.channel, "ts": stream.ts}

    async def _chat_stopStream(self, args: dict[str, Any]) -> dict[str, Any]:
        stream, message, error = self._streaming(args)
        if error:
            return {"ok": False, "error": error}
        assert stream is not None and message is not None
        text, error = _text_of(args)
        if error:
            return {"ok": False, "error": error}
        if len(message["text"]) + len(text) > self.max_stream_text:
            return {"ok": False, "error": "msg_too_long"}
        blocks = self.slack.blocks_of(args)
        if (invalid := self.slack.invalid_blocks(blocks)) is not None:
            return {"ok": False, "error": "invalid_blocks", "errors": [invalid]}
        previous = dict(message)
        message["text"] += text
        if blocks:
            message["blocks"] = blocks
        stream.state = "stopped"
        self.slack.echo_change(message, previous, stream.channel)
        return {"ok": True, "channel": stream.channel, "ts": stream.ts, "message": message}

    def _streaming(self, args: dict[str, Any]) -> tuple[Stream | None, dict[str, Any] | None, str | None]:
        channel, ts = str(args.get("channel") or ""), str(args.get("ts") or "")
        stream = self.streams.get(ts)
        message = next((m for m in self.slack.messages[channel] if m["ts"] == ts), None)
        if stream is None or message is None or stream.channel != channel:
            return None, None, "message_not_found"
        if stream.state == "stopped_by_user":
            return None, None, "stopped_by_user"
        if stream.state != "streaming":
            return None, None, "message_not_in_streaming_state"
        return stream, message, None

    async def _assistant_threads_setStatus(self, args: dict[str, Any]) -> dict[str, Any]:
        channel, thread_ts, status = args.get("channel_id"), args.get("thread_ts"), args.get("status")
        if not channel or not thread_ts or status is None:
            return {"ok": False, "error": "invalid_arguments"}
        self.statuses.append({"channel_id": channel, "thread_ts": thread_ts, "status": status,
                              "loading_messages": args.get("loading_messages"), "at": time.monotonic()})
        if status:
            self.status[(channel, thread_ts)] = status
        else:
            self.status.pop((channel, thread_ts), None)
        self.slack.changed()
        return {"ok": True}

    async def _assistant_threads_setSuggestedPrompts(self, args: dict[str, Any]) -> dict[str, Any]:
        channel, prompts = args.get("channel_id"), args.get("prompts")
        if not channel or not isinstance(prompts, list) or not 1 <= len(prompts) <= 4:
            return {"ok": False, "error": "invalid_arguments"}
        if not all(isinstance(p, dict) and p.get("title") and p.get("message") for p in prompts):
            return {"ok": False, "error": "invalid_arguments"}
        self.suggested.append({"channel_id": channel, "thread_ts": args.get("thread_ts"), "prompts": prompts,
                               "title": args.get("title")})
        self.slack.changed()
        return {"ok": True}

    async def _assistant_threads_setTitle(self, args: dict[str, Any]) -> dict[str, Any]:
        channel, thread_ts, title = args.get("channel_id"), args.get("thread_ts"), args.get("title")
        if not channel or not thread_ts or not title:
            return {"ok": False, "error": "invalid_arguments"}
        self.titles[(str(channel), str(thread_ts))] = str(title)
        self.slack.changed()
        return {"ok": True}


def _text_of(args: dict[str, Any]) -> tuple[str, str | None]:
    """The Markdown a streaming call carries (``markdown_text``, or ``markdown_text`` chunks), or an error."""
    text = args.get("markdown_text") or ""
    chunks = args.get("chunks")
    if isinstance(chunks, str):  # a form-encoded call sends it as JSON text
        chunks = json.loads(chunks)
    for chunk in chunks or []:
        if not isinstance(chunk, dict) or chunk.get("type") != "markdown_text":
            return "", "invalid_chunks"
        text += str(chunk.get("text") or "")
    if not isinstance(text, str):
        return "", "invalid_arguments"
    if len(text) > MARKDOWN_LIMIT:
        return "", "msg_too_long"
    return text, None

