"""Slack payloads to decisions and jobs: the pure half of the adapter, on recorded payloads."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from bots.answer import Question
from bots.decisions import Ask, Ignore, Notice
from bots.limits import Recent
from bots.messages import Messages, queued_text
from bots.sink import Control, Reply
from bots.slack.events import (
    AccessPolicy,
    BotIdentity,
    CheckThread,
    Ignored,
    MalformedEvent,
    SlackMessage,
    bot_in_thread,
    bot_text_for_history,
    decide,
    event_of,
    find_post,
    parse_message,
    plain_text,
    post_args,
    source,
    thread_turns,
    update_args,
)
from engine.types import Turn
from tests.fakes import slack_payloads as p

ME = BotIdentity(user_id=p.BOT_USER, bot_id=p.BOT_ID)
EVERYONE = AccessPolicy()


def silent(decision: object) -> bool:
    """Ignored without a log line: it was never for the bot."""
    return isinstance(decision, Ignore) and not decision.log


def message(body: dict[str, Any]) -> SlackMessage:
    parsed = parse_message(event_of(body), ME)
    assert isinstance(parsed, SlackMessage), parsed
    return parsed


def test_a_mention_and_its_message_copy_are_the_same_message_with_the_same_question() -> None:
    mention, copy = message(p.APP_MENTION), message(p.MESSAGE_WITH_MENTION)
    assert mention.key == copy.key == ("C0LAN2Q65", "1515449483.000108")
    question = Ask("What is a closure in Python (https://python.org)?")
    assert decide(mention, ME, EVERYONE) == decide(copy, ME, EVERYONE) == question
    assert mention.reply_thread_ts == "1515449483.000108" and not mention.in_thread


def test_replies_go_to_the_thread_of_a_threaded_message() -> None:
    reply = message(p.MENTION_IN_THREAD)
    assert reply.in_thread and reply.reply_thread_ts == "1515449483.000108"
    assert decide(reply, ME, EVERYONE) == Ask("and in Rust?")


def test_dms_are_answered_without_a_mention() -> None:
    dm = message(p.DM)
    assert dm.is_dm and decide(dm, ME, EVERYONE) == Ask("How do I reverse a list?")
    with_file = message(p.FILE_SHARE_DM_WITH_TEXT)
    assert with_file.has_files and decide(with_file, ME, EVERYONE) == Ask("What does this log say?")


@pytest.mark.parametrize(("payload", "reason"), [
    (p.OWN_MESSAGE, "our own message"),
    (p.OTHER_BOT, "another bot's message"),
    (p.LEGACY_BOT_MESSAGE, "message subtype 'bot_message'"),
    (p.MESSAGE_CHANGED, "message subtype 'message_changed'"),
    (p.MESSAGE_DELETED, "message subtype 'message_deleted'"),
    (p.CHANNEL_JOIN, "message subtype 'channel_join'"),
    (p.body({"type": "reaction_added", "user": "U1", "reaction": "thumbsup"}), "event type 'reaction_added'"),
])
def test_bookkeeping_and_bot_messages_never_trigger(payload: dict[str, Any], reason: str) -> None:
    assert parse_message(event_of(payload), ME) == Ignored(reason)


def test_thread_replies_without_a_mention_need_the_bot_in_the_thread() -> None:
    reply = message(p.THREAD_REPLY)
    assert decide(reply, ME, EVERYONE) == CheckThread()
    assert silent(decide(reply, ME, EVERYONE, thread_is_ours=False))
    assert decide(reply, ME, EVERYONE, thread_is_ours=True) == Ask(
        "Thanks! And what about <generators> & iterators?")
    assert silent(decide(reply, ME, AccessPolicy(follow_threads=False)))
    to_someone_else = replace(reply, text="<@U0G9QF9C6> what do you think?")
    assert silent(decide(to_someone_else, ME, EVERYONE, thread_is_ours=True))
    broadcast = message(p.THREAD_BROADCAST)
    assert decide(broadcast, ME, EVERYONE) == CheckThread()
    assert silent(decide(message(p.TOP_LEVEL_CHATTER), ME, EVERYONE))


def test_access_lists_deny_others_but_not_silently() -> None:
    mention = message(p.APP_MENTION)
    denied_user = decide(mention, ME, AccessPolicy(allowed_users=frozenset({"U0SOMEONE"})))
    assert isinstance(denied_user, Ignore) and denied_user.log and "SLACK_ALLOWED_USERS" in denied_user.reason
    denied_channel = decide(mention, ME, AccessPolicy(allowed_channels=frozenset({"C0OTHER"})))
    assert isinstance(denied_channel, Ignore) and denied_channel.log
    assert "SLACK_ALLOWED_CHANNELS" in denied_channel.reason
    allowed = AccessPolicy(allowed_channels=frozenset({"C0LAN2Q65"}), allowed_users=frozenset({"U061F7AUR"}))
    assert isinstance(decide(mention, ME, allowed), Ask)
    # DMs are not in a channel list; the user list still applies
    assert isinstance(decide(message(p.DM), ME, AccessPolicy(allowed_channels=frozenset({"C0OTHER"}))), Ask)
    # in other channels the bot does not even look up threads
    reply = message(p.THREAD_REPLY)
    assert silent(decide(reply, ME, AccessPolicy(allowed_channels=frozenset({"C0OTHER"}))))


def test_empty_mentions_get_help_and_files_alone_are_the_question() -> None:
    assert decide(message(p.EMPTY_MENTION), ME, EVERYONE) == Notice(Messages.HELP)
    files = message(p.FILES_ONLY_MENTION)
    assert files.has_files and decide(files, ME, EVERYONE) == Ask("")


@pytest.mark.parametrize("payload", [
    None, [], "text", {"type": "event_callback"}, {"event": 5}, {"event": "garbage"}, {"event": ["a"]},
])
def test_bodies_without_an_event_object_are_malformed(payload: Any) -> None:
    with pytest.raises(MalformedEvent):
        event_of(payload)


@pytest.mark.parametrize("event", [
    {"type": "message", "channel": "C1", "user": "U1", "text": "no ts"},
    {"type": "message", "ts": "1.2", "user": "U1", "text": "no channel"},
    {"type": "app_mention", "channel": "C1", "ts": "1.2", "text": "no user"},
    {"type": "message", "channel": "C1", "ts": "1.2", "user": "U1", "text": ["not", "a", "string"]},
    {"type": "message", "channel": ["C1"], "ts": "1.2", "user": "U1", "text": "hi"},
    {"type": "message", "channel": "C1", "ts": "1.2", "user": "U1", "text": "hi", "thread_ts": 1.2},
])
def test_messages_missing_what_a_person_s_message_has_are_malformed(event: dict[str, Any]) -> None:
    with pytest.raises(MalformedEvent):
        parse_message(event, ME)


@pytest.mark.parametrize(("markup", "plain"), [
    (f"<@{p.BOT_USER}> hi", "hi"),
    (f"hi <@{p.BOT_USER}|engbot>, and <@U0G9QF9C6> too", "hi and @U0G9QF9C6 too"),
    (f"<@{p.BOT_USER}>: what is 2 + 2?", "what is 2 + 2?"),
    ("ask <@U0G9QF9C6|ann>", "ask @ann"),
    ("in <#C0LAN2Q99|python-help> or <#C0LAN2Q98>", "in #python-help or #C0LAN2Q98"),
    ("see <https://docs.python.org/3/|the docs>", "see the docs (https://docs.python.org/3/)"),
    ("see <https://example.com>", "see https://example.com"),
    ("see <http://example.com|example.com>", "see example.com"),
    ("mail <mailto:a@b.org|a@b.org>", "mail a@b.org"),
    ("<!here> <!channel> <!subteam^S0123|@oncall>", "@here @channel @oncall"),
    ("due <!date^1392734382^{date_short}|Feb 18, 2014>", "due Feb 18, 2014"),
    ("if a &lt; b &amp;&amp; c &gt; d", "if a < b && c > d"),
    ("`x &lt;= 1`", "`x <= 1`"),
])
def test_slack_markup_becomes_plain_text_for_the_model(markup: str, plain: str) -> None:
    assert plain_text(markup, p.BOT_USER) == plain


def test_the_thread_becomes_the_conversation_with_the_bot_as_assistant() -> None:
    reply = message(p.THREAD_REPLY)
    history = p.REPLIES["messages"]
    assert bot_in_thread(history, ME) and not bot_in_thread(history[:1], ME)
    turns = thread_turns(history, reply, "And generators?", ME)
    # two people in the thread: each message says who wrote it (the profile's display name, else the user id)
    assert turns == (
        Turn("user", "ann.e: What is a closure in Python (https://python.org)?"),
        Turn("assistant", "A *closure* is a function that remembers variables from its enclosing scope."),
        Turn("user", "@U0G9QF9C6: @ann.e see also #python-help\n\nann.e: And generators?"),
    )


def test_one_person_and_the_bot_need_no_names() -> None:
    reply = message(p.THREAD_REPLY)
    alone = [m for m in p.REPLIES["messages"] if m.get("user") != "U0G9QF9C6"]
    assert thread_turns(alone, reply, "And generators?", ME) == (
        Turn("user", "What is a closure in Python (https://python.org)?"),
        Turn("assistant", "A *closure* is a function that remembers variables from its enclosing scope."),
        Turn("user", "And generators?"),
    )


def test_with_allowed_users_the_messages_of_anyone_else_never_reach_the_model() -> None:
    reply = message(p.THREAD_REPLY)
    turns = thread_turns(p.REPLIES["messages"], reply, "And generators?", ME,
                         allowed_users=frozenset({"U061F7AUR"}))
    assert turns == (
        Turn("user", "What is a closure in Python (https://python.org)?"),
        Turn("assistant", "A *closure* is a function that remembers variables from its enclosing scope."),
        Turn("user", "And generators?"),
    )
    assert "python-help" not in str(turns)  # U0G9QF9C6's message is not there, nor their name


def test_history_leaves_out_status_messages_cursors_and_failure_notes() -> None:
    assert bot_text_for_history(Messages.THINKING) == ""
    assert bot_text_for_history(queued_text(3)) == "" and bot_text_for_history(queued_text(2, 14.6)) == ""
    assert bot_text_for_history(Messages.RATE_LIMITED.format(seconds=12)) == ""
    assert bot_text_for_history(Messages.HELP) == ""
    assert bot_text_for_history(Messages.FAILED) == ""
    assert bot_text_for_history("Half an answer" + Messages.CURSOR) == "Half an answer"
    assert bot_text_for_history("Half an answer\n\n" + Messages.SHUTDOWN) == "Half an answer"


def test_history_tolerates_junk_and_falls_back_to_the_question() -> None:
    reply = message(p.THREAD_REPLY)
    junk: list[Any] = [None, "text", {"ts": 5, "text": "x"}, {"ts": "1.0"}, {"text": "no ts"}]
    assert thread_turns(junk, reply, "Just this?", ME) == (Turn("user", "Just this?"),)
    # a thread that starts with the bot (e.g. its parent was deleted) still starts with the user
    only_bot = [{"user": p.BOT_USER, "bot_id": p.BOT_ID, "text": "Earlier answer", "ts": "1515449484.000109"}]
    assert thread_turns(only_bot, reply, "Next?", ME) == (Turn("user", "Next?"),)


def test_jobs_carry_a_dedup_key_per_message_and_attempt() -> None:
    mention, copy = message(p.APP_MENTION), message(p.MESSAGE_WITH_MENTION)

    async def turns() -> tuple[Turn, ...]:
        return (Turn("user", "q"),)

    first = Question(mention.user, source(mention), turns)
    assert first.dedup_key("slack") == Question(copy.user, source(copy), turns).dedup_key("slack") == \
        "slack:C0LAN2Q65:1515449483.000108"
    # a second attempt at the same question (regenerate) is another job, never refused as a duplicate
    assert replace(first, attempt=2).dedup_key("slack") == "slack:C0LAN2Q65:1515449483.000108#2"


def test_api_arguments_put_replies_in_the_thread() -> None:
    assert post_args("C1", "1.2", Reply("hi")) == {"channel": "C1", "thread_ts": "1.2", "text": "hi",
                                                   "unfurl_links": False, "unfurl_media": False}
    assert update_args("C1", "1.3", Reply("edited")) == {"channel": "C1", "ts": "1.3", "text": "edited"}


def test_controls_become_a_button_row_under_the_text() -> None:
    stop = Control("stop", "Stop", value="job1", style="danger")
    args = post_args("C1", "1.2", Reply("*Thinking*", (stop,)))
    assert args["text"] == "*Thinking*"  # the notification fallback
    section, actions = args["blocks"]
    assert section == {"type": "section", "text": {"type": "mrkdwn", "text": "*Thinking*"}}
    assert actions["type"] == "actions"
    assert actions["elements"] == [{"type": "button", "action_id": "engbot:stop:job1", "value": "job1",
                                    "style": "danger", "text": {"type": "plain_text", "text": "Stop", "emoji": True}}]
    # once a message had controls, every edit sends its blocks; an empty list takes the buttons away
    assert update_args("C1", "1.3", Reply("done"), clear_blocks=True)["blocks"] == []
    assert "blocks" not in update_args("C1", "1.3", Reply("done"))


def test_a_lost_post_is_found_in_the_thread_by_its_text_after_the_question() -> None:
    history = p.REPLIES["messages"]
    thinking = "1515449699.000299"
    assert find_post(history, ME, "_Thinking…_", after="1515449495.000111") == thinking
    assert find_post(history, ME, "_Thinking…_", after=thinking) is None  # older than the question: not ours
    assert find_post(history, ME, "_Thinking…_", after="1515449495.000111", known=lambda ts: ts == thinking) is None
    assert find_post(history, ME, "unrelated bot noise", after="") is None  # another bot's message
    assert find_post(history, ME, "Something else", after="") is None


def test_recent_forgets_after_its_ttl_and_past_its_size() -> None:
    now = [0.0]
    recent: Recent[str, bool] = Recent(ttl_s=10, max_size=2, clock=lambda: now[0])
    assert recent.first_time("a", True) and not recent.first_time("a", True)
    now[0] = 11
    assert recent.first_time("a", True)  # expired
    recent.put("b", True)
    recent.put("c", False)
    assert len(recent) == 2 and recent.get("a") is None and recent.get("c") is False
