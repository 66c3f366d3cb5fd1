"""Events API bodies and Web API answers in the shape Slack sends them (ids shortened), for the pure tests."""

from __future__ import annotations

from typing import Any

BOT_USER = "U07BOT0001"
BOT_ID = "B07BOT0001"


def body(event: dict[str, Any]) -> dict[str, Any]:
    return {
        "token": "ZZZZZZWSxiZZZ2yIvs3peJ",
        "team_id": "T061EG9R6",
        "context_team_id": "T061EG9R6",
        "api_app_id": "A0MDYCDME",
        "event": event,
        "type": "event_callback",
        "event_id": "Ev0MDYHUEL",
        "event_time": 1515449483,
        "authorizations": [{"enterprise_id": None, "team_id": "T061EG9R6", "user_id": BOT_USER, "is_bot": True,
                            "is_enterprise_install": False}],
        "is_ext_shared_channel": False,
        "event_context": "4-eyJldCI6ImFwcF9tZW50aW9uIn0",
    }


APP_MENTION = body({
    "client_msg_id": "7e4e6ac0-7d0f-4d6b-9b45-3f0f4bb0c6c1",
    "type": "app_mention",
    "text": f"<@{BOT_USER}> What is a closure in <https://python.org|Python>?",
    "user": "U061F7AUR",
    "ts": "1515449483.000108",
    "blocks": [{"type": "rich_text", "block_id": "x1", "elements": []}],
    "team": "T061EG9R6",
    "channel": "C0LAN2Q65",
    "event_ts": "1515449483.000108",
})

# the same mention, delivered again as a message.channels event
MESSAGE_WITH_MENTION = body({
    "client_msg_id": "7e4e6ac0-7d0f-4d6b-9b45-3f0f4bb0c6c1",
    "type": "message",
    "text": f"<@{BOT_USER}> What is a closure in <https://python.org|Python>?",
    "user": "U061F7AUR",
    "ts": "1515449483.000108",
    "team": "T061EG9R6",
    "channel": "C0LAN2Q65",
    "event_ts": "1515449483.000108",
    "channel_type": "channel",
})

MENTION_IN_THREAD = body({
    "type": "app_mention",
    "text": f"<@{BOT_USER}> and in Rust?",
    "user": "U061F7AUR",
    "ts": "1515449522.000016",
    "thread_ts": "1515449483.000108",
    "team": "T061EG9R6",
    "channel": "C0LAN2Q65",
    "event_ts": "1515449522.000016",
})

DM = body({
    "client_msg_id": "a0b1c2d3-0000-4000-8000-000000000001",
    "type": "message",
    "text": "How do I reverse a list?",
    "user": "U061F7AUR",
    "ts": "1515449600.000200",
    "team": "T061EG9R6",
    "channel": "D024BE91L",
    "event_ts": "1515449600.000200",
    "channel_type": "im",
})

THREAD_REPLY = body({
    "client_msg_id": "a0b1c2d3-0000-4000-8000-000000000002",
    "type": "message",
    "text": "Thanks! And what about &lt;generators&gt; &amp; iterators?",
    "user": "U061F7AUR",
    "ts": "1515449700.000300",
    "thread_ts": "1515449483.000108",
    "parent_user_id": "U061F7AUR",
    "team": "T061EG9R6",
    "channel": "C0LAN2Q65",
    "event_ts": "1515449700.000300",
    "channel_type": "channel",
})

THREAD_BROADCAST = body({
    "type": "message",
    "subtype": "thread_broadcast",
    "text": "Also sending this to the channel",
    "user": "U061F7AUR",
    "ts": "1515449710.000310",
    "thread_ts": "1515449483.000108",
    "root": {"ts": "1515449483.000108", "user": "U061F7AUR", "text": "parent"},
    "channel": "C0LAN2Q65",
    "event_ts": "1515449710.000310",
    "channel_type": "channel",
})

TOP_LEVEL_CHATTER = body({
    "type": "message",
    "text": "Anyone up for lunch?",
    "user": "U0G9QF9C6",
    "ts": "1515449800.000400",
    "channel": "C0LAN2Q65",
    "event_ts": "1515449800.000400",
    "channel_type": "channel",
})

OWN_MESSAGE = body({
    "type": "message",
    "text": "_Thinking…_",
    "user": BOT_USER,
    "bot_id": BOT_ID,
    "app_id": "A0MDYCDME",
    "bot_profile": {"id": BOT_ID, "name": "engbot", "app_id": "A0MDYCDME"},
    "ts": "1515449484.000109",
    "thread_ts": "1515449483.000108",
    "channel": "C0LAN2Q65",
    "event_ts": "1515449484.000109",
    "channel_type": "channel",
})

OTHER_BOT = body({
    "type": "message",
    "text": f"<@{BOT_USER}> ping from another bot",
    "user": "U0OTHERBOT",
    "bot_id": "B0OTHERBOT",
    "ts": "1515449900.000500",
    "channel": "C0LAN2Q65",
    "event_ts": "1515449900.000500",
    "channel_type": "channel",
})

LEGACY_BOT_MESSAGE = body({
    "type": "message",
    "subtype": "bot_message",
    "text": "Deploy finished",
    "bot_id": "B0WEBHOOK",
    "username": "deploy-hook",
    "ts": "1515449910.000510",
    "channel": "C0LAN2Q65",
    "event_ts": "1515449910.000510",
    "channel_type": "channel",
})

MESSAGE_CHANGED = body({
    "type": "message",
    "subtype": "message_changed",
    "hidden": True,
    "message": {"type": "message", "user": "U061F7AUR", "text": f"<@{BOT_USER}> edited question",
                "ts": "1515449483.000108", "edited": {"user": "U061F7AUR", "ts": "1515449950.000000"}},
    "previous_message": {"type": "message", "user": "U061F7AUR", "text": "old", "ts": "1515449483.000108"},
    "channel": "C0LAN2Q65",
    "ts": "1515449950.000600",
    "event_ts": "1515449950.000600",
    "channel_type": "channel",
})

MESSAGE_DELETED = body({
    "type": "message",
    "subtype": "message_deleted",
    "hidden": True,
    "deleted_ts": "1515449483.000108",
    "previous_message": {"type": "message", "user": "U061F7AUR", "text": "gone", "ts": "1515449483.000108"},
    "channel": "C0LAN2Q65",
    "ts": "1515449960.000700",
    "event_ts": "1515449960.000700",
    "channel_type": "channel",
})

CHANNEL_JOIN = body({
    "type": "message",
    "subtype": "channel_join",
    "text": "<@U0NEWUSER> has joined the channel",
    "user": "U0NEWUSER",
    "ts": "1515449970.000800",
    "channel": "C0LAN2Q65",
    "event_ts": "1515449970.000800",
    "channel_type": "channel",
})

FILES_ONLY_MENTION = body({
    "type": "app_mention",
    "text": f"<@{BOT_USER}>",
    "user": "U061F7AUR",
    "ts": "1515449980.000900",
    "files": [{"id": "F0S43PZDF", "name": "screenshot.png", "mimetype": "image/png"}],
    "upload": False,
    "channel": "C0LAN2Q65",
    "event_ts": "1515449980.000900",
})

FILE_SHARE_DM_WITH_TEXT = body({
    "type": "message",
    "subtype": "file_share",
    "text": "What does this log say?",
    "user": "U061F7AUR",
    "ts": "1515449990.001000",
    "files": [{"id": "F0S43PZDG", "name": "app.log", "mimetype": "text/plain"}],
    "channel": "D024BE91L",
    "event_ts": "1515449990.001000",
    "channel_type": "im",
})

EMPTY_MENTION = body({
    "type": "app_mention",
    "text": f"<@{BOT_USER}>   ",
    "user": "U061F7AUR",
    "ts": "1515450000.001100",
    "channel": "C0LAN2Q65",
    "event_ts": "1515450000.001100",
})

# conversations.replies for the thread of APP_MENTION, before THREAD_REPLY arrived
REPLIES = {
    "ok": True,
    "messages": [
        {"type": "message", "user": "U061F7AUR", "text": f"<@{BOT_USER}> What is a closure in "
         "<https://python.org|Python>?", "thread_ts": "1515449483.000108", "reply_count": 3,
         "ts": "1515449483.000108", "client_msg_id": "7e4e6ac0-7d0f-4d6b-9b45-3f0f4bb0c6c1",
         "user_profile": {"avatar_hash": "g0a1b2c3d4e5", "image_72": "https://secure.gravatar.com/avatar/x.jpg",
                          "first_name": "Ann", "real_name": "Ann Example", "display_name": "ann.e",
                          "team": "T061EG9R6", "name": "ann", "is_restricted": False,
                          "is_ultra_restricted": False}},
        {"type": "message", "user": BOT_USER, "bot_id": BOT_ID, "app_id": "A0MDYCDME",
         "text": "A *closure* is a function that remembers variables from its enclosing scope.",
         "thread_ts": "1515449483.000108", "ts": "1515449484.000109"},
        {"type": "message", "user": "U0OTHERBOT", "bot_id": "B0OTHERBOT", "text": "unrelated bot noise",
         "thread_ts": "1515449483.000108", "ts": "1515449490.000110"},
        {"type": "message", "user": "U0G9QF9C6", "text": "<@U061F7AUR> see also <#C0LAN2Q99|python-help>",
         "thread_ts": "1515449483.000108", "ts": "1515449495.000111"},
        {"type": "message", "user": BOT_USER, "bot_id": BOT_ID, "text": "_Thinking…_",
         "thread_ts": "1515449483.000108", "ts": "1515449699.000299"},
        # the message being answered, and a later one: both left out of the history
        {"type": "message", "user": "U061F7AUR", "text": "Thanks! And what about &lt;generators&gt; &amp; "
         "iterators?", "thread_ts": "1515449483.000108", "ts": "1515449700.000300"},
        {"type": "message", "user": "U0G9QF9C6", "text": "later", "thread_ts": "1515449483.000108",
         "ts": "1515449701.000301"},
    ],
    "has_more": False,
    "response_metadata": {"next_cursor": ""},
}
