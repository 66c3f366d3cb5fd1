"""``bots.stream.stream_reply``, the streaming every adapter shares: scripted engine events into an in-memory thread.

The adapters' own tests run it against the fake Slack and Discord; these pin down what holds on any platform.
"""

from __future__ import annotations

import asyncio

import pytest

from bots.messages import Messages
from bots.sink import Reply
from bots.stream import MessageChain, StreamStyle, stream_reply
from engine.types import Done, Event, Failed, Job, TextPiece
from testkit.memory_sink import MemorySink as Thread
from testkit.scripted import ScriptedEngine, answer, done, pieces, started


async def stream(events: list[Event], style: StreamStyle, thread: Thread) -> Done | Failed:
    handle = await ScriptedEngine(events, delay_s=0).submit(Job.ask("question"))
    placeholder = await thread.post(Reply(Messages.THINKING))
    return await stream_reply(handle, thread, placeholder, style, placeholder=Reply(Messages.THINKING))


async def test_text_is_rendered_once_per_edit_not_once_per_piece() -> None:
    rendered: list[str] = []

    def render(text: str) -> str:
        rendered.append(text)
        return text.upper()

    text = "Some words to stream. " * 30
    thread = Thread()
    final = await stream(answer(text, size=2), StreamStyle(limit=2000, edit_interval_s=60, render=render), thread)
    assert isinstance(final, Done)
    edits = [call for call in thread.calls if call[0] == "edit"]
    assert len(edits) == 2  # the first piece at once, then the final text: the interval holds the rest back
    assert len(rendered) == len(edits)  # 330 pieces arrived; only what was sent was rendered
    assert list(thread.messages.values()) == [text.rstrip().upper()]


async def test_every_message_fits_the_limit_as_sent_and_a_failure_note_fits_too() -> None:
    def render(text: str) -> str:  # a rendering that doubles the text, e.g. escapes
        return text.replace("&", "&&")

    text = "Q&A & R&D, one & all. " * 20
    failed = [started(), *pieces(text), Failed("timeout", "generation took longer than 5 s")]
    thread = Thread()
    final = await stream(failed, StreamStyle(limit=120, edit_interval_s=0, render=render), thread)
    assert isinstance(final, Failed)
    texts = list(thread.messages.values())
    assert len(texts) > 3 and all(len(t) <= 120 for t in texts), [len(t) for t in texts]
    assert texts[-1].endswith("\n\n" + Messages.TIMEOUT.format(reason=final.reason))
    assert not any(t.endswith(Messages.CURSOR) for t in texts)
    assert "".join("".join(texts).split()).startswith("".join(render(text).split()))


@pytest.mark.parametrize("can_delete", [True, False])
async def test_a_job_taken_over_by_another_host_restarts_in_one_clean_reply(can_delete: bool) -> None:
    abandoned = "The first host got this far before it died. " * 12  # several messages at this limit
    retried = "The second host answers in full."
    events = [started(1), *pieces(abandoned), started(2), *pieces(retried), done(retried)]
    thread = Thread(can_delete=can_delete)
    final = await stream(events, StreamStyle(limit=100, edit_interval_s=0), thread)
    assert isinstance(final, Done)
    texts = list(thread.messages.values())
    assert texts[0] == retried  # the answer is in the first message again, once
    if can_delete:
        assert texts == [retried]
    else:  # the abandoned continuations say so instead of showing half an old answer
        assert len(texts) > 1 and all(t == Messages.RETRACTED for t in texts[1:])


async def test_a_takeover_before_any_text_changes_nothing() -> None:
    thread = Thread()
    events = [started(1), started(2), *pieces("Hello."), done("Hello.")]
    assert isinstance(await stream(events, StreamStyle(limit=100, edit_interval_s=0), thread), Done)
    assert list(thread.messages.values()) == ["Hello."]
    assert [op for op, _ in thread.calls] == ["post"] + ["edit"] * (len(pieces("Hello.")) + 1)  # no extra edit


async def test_a_message_opened_for_more_text_that_never_comes_is_taken_back() -> None:
    # the cursor did not fit beside this text, so the next message was opened; then the answer ended
    text = "&" * 19
    thread = Thread()
    style = StreamStyle(limit=39, edit_interval_s=0, render=lambda t: t.replace("&", "&&"))
    assert isinstance(await stream([started(), *pieces(text, size=19), done(text)], style, thread), Done)
    assert list(thread.messages.values()) == ["&&" * 19]  # not followed by an "empty answer" message


async def test_an_event_read_already_is_handled_first_and_a_slow_edit_delays_the_next_one() -> None:
    """What a platform's own streaming hands over to edits: the text so far (``chain.tail``) and an event it read;
    an edit that waited (a workspace budget) counts its interval from its end, so the text that came meanwhile
    goes in one edit, not in one per piece."""

    class Slow(Thread):
        async def edit(self, message_id: str, reply: Reply, *, final: bool = False) -> None:
            await asyncio.sleep(0.1)
            await super().edit(message_id, reply, final=final)

    thread = Slow()
    text = "word " * 40
    handle = await ScriptedEngine([*pieces(text, size=2), done("Hello " + text)], delay_s=0).submit(Job.ask("q"))
    chain = MessageChain.of(await thread.post(Reply("Hel")), Reply("Hel"))
    chain.tail = "Hel"
    final = await stream_reply(handle, thread, chain, StreamStyle(limit=2000, edit_interval_s=0.05),
                               pending=TextPiece("lo "))
    assert isinstance(final, Done)
    assert list(thread.messages.values()) == [("Hello " + text).rstrip()]
    assert len([c for c in thread.calls if c[0] == "edit"]) <= 3  # the pending piece at once; then the rest
