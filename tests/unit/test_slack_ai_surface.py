"""Slack's AI surface, the pure parts: suggested prompts and their setting, titles, the assistant events, the
recipient team of a stream, the final controls under a streamed answer, and the Markdown a stream carries."""

from __future__ import annotations

from typing import Any

import pytest

from bots.messages import Messages, queued_status
from bots.presses import Action
from bots.sink import Control, Reply
from bots.slack.assistant import (
    DEFAULT_PROMPTS,
    OfferPrompts,
    SuggestedPrompt,
    assistant_event,
    parse_prompts,
    prompt_args,
    title_for,
)
from bots.slack.events import (
    BotIdentity,
    SlackMessage,
    blocks,
    control_blocks,
    parse_message,
    team_of,
    thread_turns,
)
from bots.slack.settings import SlackSettings
from bots.text import defuse_markdown, held_back, stream_cut
from engine.errors import ConfigError
from tests.fakes.slack_payloads import APP_MENTION, BOT_ID, BOT_USER, DM, body

ME = BotIdentity(BOT_USER, BOT_ID)
BOT = "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"
APP = "xapp-1-A0123456789-1234567890123-0123456789abcdef0123456789abcdef"


# ---- suggested prompts, titles, events ----


def test_prompts_from_the_setting() -> None:
    assert parse_prompts(None) == parse_prompts("  ") == DEFAULT_PROMPTS and len(DEFAULT_PROMPTS) == 4
    assert parse_prompts("none") == parse_prompts("OFF") == ()
    assert parse_prompts("Greet => Say hello to the team. | What is 2 + 2?") == (
        SuggestedPrompt("Greet", "Say hello to the team."), SuggestedPrompt("What is 2 + 2?", "What is 2 + 2?"))
    long = "Explain in great detail how the garbage collector of CPython finds reference cycles"
    (only,) = parse_prompts(long)
    assert only.message == long and len(only.title) <= 60 and only.title.endswith("…")
    with pytest.raises(ValueError, match="at most 4"):
        parse_prompts("a|b|c|d|e")
    with pytest.raises(ValueError, match="empty prompt"):
        parse_prompts("a||b")
    assert prompt_args(DEFAULT_PROMPTS[:1]) == [{"title": DEFAULT_PROMPTS[0].title,
                                                 "message": DEFAULT_PROMPTS[0].message}]


def test_streaming_and_prompt_settings() -> None:
    base = {"SLACK_BOT_TOKEN": BOT, "SLACK_APP_TOKEN": APP}
    default = SlackSettings.from_environ(base)
    assert default is not None and default.streaming == "auto" and default.suggested_prompts == DEFAULT_PROMPTS
    edits = SlackSettings.from_environ({**base, "SLACK_STREAMING": "Edits", "SLACK_SUGGESTED_PROMPTS": "none"})
    assert edits is not None and edits.streaming == "edits" and edits.suggested_prompts == ()
    with pytest.raises(ConfigError) as caught:
        SlackSettings.from_environ({**base, "SLACK_STREAMING": "fast"})
    assert caught.value.name == "SLACK_STREAMING"
    with pytest.raises(ConfigError) as caught:
        SlackSettings.from_environ({**base, "SLACK_SUGGESTED_PROMPTS": "a|b|c|d|e"})
    assert caught.value.name == "SLACK_SUGGESTED_PROMPTS" and "at most 4" in str(caught.value)


def test_a_title_is_the_questions_first_line_cut() -> None:
    assert title_for("\n  What is a closure?  \nAnd why?") == "What is a closure?"
    title = title_for("word " * 40)
    assert len(title) <= 60 and title.endswith("word…")
    assert title_for("") == ""


def test_which_events_ask_for_prompts() -> None:
    started = {"type": "assistant_thread_started", "event_ts": "1.2", "assistant_thread": {
        "user_id": "U1", "context": {"channel_id": "C1", "team_id": "T1", "enterprise_id": None},
        "channel_id": "D1", "thread_ts": "1729999327.187299"}}
    assert assistant_event(started) == OfferPrompts("D1", "1729999327.187299", "U1")
    assert assistant_event({"type": "app_home_opened", "user": "U1", "channel": "D1", "tab": "messages"}) == \
        OfferPrompts("D1", None, "U1")
    assert assistant_event({"type": "app_home_opened", "user": "U1", "channel": "D1", "tab": "home"}) is None
    assert assistant_event({**started, "type": "assistant_thread_context_changed"}) is None
    assert assistant_event({"type": "assistant_thread_started", "assistant_thread": "?"}) is None
    assert assistant_event({"type": "assistant_thread_started", "assistant_thread": {"channel_id": "D1"}}) is None


# ---- streams: the recipient, the final controls, the history ----


def test_the_recipient_team_is_the_askers() -> None:
    assert team_of(APP_MENTION) == "T061EG9R6"
    shared = body({**APP_MENTION["event"], "team": "T0THEIRS", "user_team": "T0USER"})
    assert team_of(shared) == "T0USER"  # a Slack Connect channel: the person's own team
    bare: dict[str, Any] = {"event": {"type": "message"}, "authorizations": [{"team_id": "T0AUTH"}]}
    assert team_of(bare) == "T0AUTH"
    assert team_of({"event": {}, "enterprise_id": "E0ORG"}) == "E0ORG"
    assert team_of({"event": {}}) is None and team_of("?") is None


def test_the_final_controls_under_a_streamed_answer() -> None:
    controls = (Control(Action.REGENERATE, "Regenerate", "ab12"), Control(Action.GOOD, "👍", "ab12"),
                Control(Action.BAD, "👎", "ab12"))
    under = control_blocks(controls)
    assert [b["type"] for b in under] == ["actions", "context_actions"]
    assert under[0]["elements"][0]["action_id"] == "engbot:regenerate:ab12"
    assert under[1]["elements"][0]["action_id"] == "engbot:feedback:ab12"
    assert blocks(Reply("text", controls))[1:] == under  # an edited reply: its text, then the same controls
    assert control_blocks(()) == []


def test_the_parent_of_an_assistant_thread_is_not_part_of_the_conversation() -> None:
    message = parse_message({**DM["event"], "thread_ts": "1515449500.000100"}, ME)
    assert isinstance(message, SlackMessage)
    history = [{"type": "message", "subtype": "assistant_app_thread", "user": BOT_USER, "bot_id": BOT_ID,
                "text": "New chat", "ts": "1515449500.000100"},
               {"type": "message", "user": "U061F7AUR", "text": "Hi", "ts": "1515449550.000100",
                "thread_ts": "1515449500.000100"}]
    turns = thread_turns(history, message, "How do I reverse a list?", ME)
    assert all(t.role == "user" for t in turns) and not any("New chat" in t.content for t in turns)
    assert "Hi" in turns[0].content and turns[-1].content.endswith("How do I reverse a list?")


# ---- the Markdown a stream carries ----


def test_mention_markup_is_defused_and_everything_else_kept() -> None:
    text = "Ping <!channel>, <!here> and <@U0123ABCD>; keep <!DOCTYPE html>, a < b, <https://x.org> and **bold**"
    defused = defuse_markdown(text)
    assert "<!channel>" not in defused and "<@U0123ABCD>" not in defused and "<!here>" not in defused
    assert defused.replace("\u200b", "") == text
    assert "<!DOCTYPE html>" in defused and "a < b" in defused and "<https://x.org>" in defused


def test_an_unfinished_markup_at_the_end_waits_for_the_next_piece() -> None:
    assert held_back("Ping <!chan") == len("<!chan")
    assert held_back("Ping <!channel> now") == 0 and held_back("a < b and then a long tail of text") == 0
    assert held_back("no markup") == 0


def test_a_streamed_message_past_its_limit_ends_at_a_good_place() -> None:
    text = "First paragraph.\n\nSecond one goes on and on and on"
    head, rest = stream_cut(text, 5, 40)
    assert text[:5] + head + rest == text and head.endswith("\n\n") and rest.startswith("Second")
    code = "Look:\n```python\n" + "x = 1\n" * 20
    head, rest = stream_cut(code, 10, 60)
    assert head.endswith("\n```") and rest.startswith("```python\n")  # closed, and reopened with its tag
    assert (code[:10] + head).count("```") == 2
    words = "a" * 100
    head, rest = stream_cut(words, 30, 60)  # no place to cut: at the limit
    assert len(words[:30] + head) == 56 and words[:30] + head + rest == words


def test_the_queue_position_as_a_status_line() -> None:
    assert queued_status(1) == "Next in line"
    assert queued_status(3, 20) == "3rd in line, about 20 s"
    assert Messages.STATUS_THINKING.startswith("is ")
