"""Slack's AI surface, the pure part: suggested prompts (``SLACK_SUGGESTED_PROMPTS``), thread titles, and the
events that ask for them (``assistant_thread_started``, ``app_home_opened`` on the Messages tab). No network:
``adapter.py`` makes the calls (``assistant.threads.setSuggestedPrompts``, ``assistant.threads.setTitle``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

MAX_PROMPTS = 4  # Slack shows at most four suggested prompts
TITLE_LIMIT = 60  # characters of a thread title (the question's first line, cut)
PROMPT_SEPARATOR = "|"  # between prompts in SLACK_SUGGESTED_PROMPTS
TITLE_SEPARATOR = "=>"  # between a prompt's title and its message


@dataclass(frozen=True, slots=True)
class SuggestedPrompt:
    """A prompt Slack offers under the message box: ``title`` on the button, ``message`` sent when it is chosen."""

    title: str
    message: str


DEFAULT_PROMPTS = (
    SuggestedPrompt("Explain a concept", "Explain what a closure is in Python, with a short example."),
    SuggestedPrompt("Write some code", "Write a Python function that tells whether a word is a palindrome."),
    SuggestedPrompt("Summarize", "Summarize the main ideas of the text I paste next in three bullet points."),
    SuggestedPrompt("Brainstorm", "Give me five ideas for a short team-building activity."),
)


def parse_prompts(raw: str | None) -> tuple[SuggestedPrompt, ...]:
    """``SLACK_SUGGESTED_PROMPTS``: prompts separated by ``|``, each ``title => message`` or just a message (then
    also its title, cut). Unset or empty: the defaults; ``none``: no prompts. Raises ``ValueError`` (saying why)
    for more than four prompts or an empty one."""
    if raw is None or not raw.strip():
        return DEFAULT_PROMPTS
    if raw.strip().lower() in ("none", "off", "false"):
        return ()
    prompts = []
    for part in raw.split(PROMPT_SEPARATOR):
        title, separator, message = part.partition(TITLE_SEPARATOR)
        title, message = title.strip(), message.strip()
        if not separator:
            title, message = cut(title, TITLE_LIMIT), title
        if not title or not message:
            raise ValueError(f"an empty prompt in {raw!r}: write 'title => message' or a message, separated by |")
        prompts.append(SuggestedPrompt(title, message))
    if len(prompts) > MAX_PROMPTS:
        raise ValueError(f"{len(prompts)} prompts: Slack shows at most {MAX_PROMPTS}")
    return tuple(prompts)


def prompt_args(prompts: Sequence[SuggestedPrompt]) -> list[dict[str, str]]:
    """``assistant.threads.setSuggestedPrompts``'s ``prompts``."""
    return [{"title": p.title, "message": p.message} for p in prompts[:MAX_PROMPTS]]


def cut(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` characters, cut at a word with an ellipsis when it is longer."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    head = text[: limit - 1]
    space = head.rfind(" ")
    return (head[:space] if space > limit // 2 else head).rstrip(" ,;:.") + "…"


def title_for(question: str) -> str:
    """A thread's title: the question's first line that holds text, cut to ``TITLE_LIMIT`` characters."""
    line = next((line for line in question.splitlines() if line.strip()), "")
    return cut(line, TITLE_LIMIT)


@dataclass(frozen=True, slots=True)
class OfferPrompts:
    """Show the suggested prompts in ``channel``: in the assistant thread ``thread_ts``, or (None) in the agent
    view's Messages tab."""

    channel: str
    thread_ts: str | None
    user: str | None


def assistant_event(event: Mapping[str, Any]) -> OfferPrompts | None:
    """What an AI-surface event asks of the bot: prompts for a new assistant thread (``assistant_thread_started``)
    or for the app's Messages tab (``app_home_opened`` with tab ``messages``, the agent view); None for anything
    else (``assistant_thread_context_changed``: the bot does not use the channel the user is looking at)."""
    kind = event.get("type")
    if kind == "assistant_thread_started":
        thread = event.get("assistant_thread")
        if not isinstance(thread, Mapping):
            return None
        channel, thread_ts, user = thread.get("channel_id"), thread.get("thread_ts"), thread.get("user_id")
        if isinstance(channel, str) and channel and isinstance(thread_ts, str) and thread_ts:
            return OfferPrompts(channel, thread_ts, user if isinstance(user, str) else None)
        return None
    if kind == "app_home_opened" and event.get("tab") == "messages":
        channel, user = event.get("channel"), event.get("user")
        if isinstance(channel, str) and channel:
            return OfferPrompts(channel, None, user if isinstance(user, str) else None)
    return None
