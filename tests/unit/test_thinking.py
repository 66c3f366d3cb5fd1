"""A reasoning model's thinking (``bots.thinking``): told apart from the answer as it streams, never shown as the
answer, shown as SHOW_THINKING says, and taken out of the history again (``bots.notes``)."""

from __future__ import annotations

import pytest

from bots.notes import answer_only, notes_block
from bots.thinking import KNOWN_TAGS, ThinkingSplitter, hide_thinking, split_thinking, tags_from_environ
from engine.api import JobFeed
from engine.errors import ConfigError
from engine.types import Done, Event, Failed, FailureKind, Job, Queued, Started, TextPiece

RAW = "<think>\nThe user asks for France's capital. That is Paris.\n</think>\n\nThe capital of France is Paris."


def split_in_pieces(text: str, size: int) -> tuple[str, str]:
    splitter = ThinkingSplitter()
    parts = []
    for i in range(0, len(text), size):
        parts += splitter.feed(text[i:i + size])
    parts += splitter.close()
    return ("".join(t for k, t in parts if k == "thinking"), "".join(t for k, t in parts if k == "answer"))


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_thinking_is_told_apart_from_the_answer_however_the_text_is_cut(size: int) -> None:
    thinking, answer = split_in_pieces(RAW, size)
    assert answer == "The capital of France is Paris."
    assert thinking.strip() == "The user asks for France's capital. That is Paris."


@pytest.mark.parametrize("opening,closing", KNOWN_TAGS)
def test_every_known_marker_pair_is_recognised(opening: str, closing: str) -> None:
    assert split_thinking(f"  {opening}hmm{closing} Yes.") == ("hmm", "Yes.")


def test_an_answer_without_thinking_passes_through_and_markers_later_in_it_are_answer_text() -> None:
    text = "Use <think> tags like <think>x</think>."
    assert split_in_pieces(text, 2) == ("", text)
    assert split_in_pieces("<b>bold</b>", 1) == ("", "<b>bold</b>")
    assert split_in_pieces("<", 1) == ("", "<")  # held back as a possible marker, then given at the end


def test_thinking_that_never_ends_is_all_thinking() -> None:
    assert split_thinking("<think>still going") == ("still going", "")


def test_thinking_tags_setting() -> None:
    assert tags_from_environ({}) == KNOWN_TAGS
    assert tags_from_environ({"THINKING_TAGS": "<reason> </reason>"}) == (("<reason>", "</reason>"),)
    with pytest.raises(ConfigError, match="THINKING_TAGS"):
        tags_from_environ({"THINKING_TAGS": "<think>"})


async def play(events: list[Event], mode: str, preamble: str = "") -> tuple[str, Done | Failed, list[Event]]:
    feed = JobFeed(Job.ask("q"), lambda job_id: None)
    shown = hide_thinking(feed.handle, mode, preamble=preamble)  # type: ignore[arg-type]
    for event in events:
        feed.emit(event)
    seen = [event async for event in shown]
    text = "".join(e.text for e in seen if isinstance(e, TextPiece))
    final = seen[-1]
    assert isinstance(final, Done | Failed)
    return text, final, seen


def script(raw: str, size: int = 5) -> list[Event]:
    return [Queued(1), Started(0, 0.0, 8), *(TextPiece(raw[i:i + size]) for i in range(0, len(raw), size)),
            Done(raw, 8, 20, "stop")]


async def test_collapsed_shows_a_note_with_the_thinkings_length_and_the_answer_only() -> None:
    text, final, seen = await play(script(RAW), "collapsed")
    assert "<think>" not in text and "That is Paris" not in text
    assert text.startswith("_💭 Thought it through (9 words, hidden)._\n\n")
    assert text.endswith("The capital of France is Paris.")
    assert isinstance(final, Done) and final.text == "The capital of France is Paris."
    assert isinstance(seen[0], Queued) and isinstance(seen[1], Started)  # the other events pass unchanged
    assert answer_only(text) == "The capital of France is Paris."


async def test_off_shows_nothing_of_the_thinking() -> None:
    text, _, _ = await play(script(RAW), "off")
    assert text == "The capital of France is Paris."


async def test_on_shows_the_thinking_between_marked_lines_and_history_leaves_it_out() -> None:
    text, final, _ = await play(script(RAW), "on")
    assert "That is Paris." in text and "<think>" not in text and "</think>" not in text
    assert text.index("That is Paris.") < text.index("The capital of France is Paris.")
    assert answer_only(text) == "The capital of France is Paris."
    assert isinstance(final, Done) and final.text == "The capital of France is Paris."


async def test_a_failure_keeps_the_answer_part_only() -> None:
    events = [*script(RAW)[:-1]]
    events.append(Failed(FailureKind.CANCELLED, "cancelled", RAW))
    _, final, _ = await play(events, "collapsed")
    assert isinstance(final, Failed) and final.partial == "The capital of France is Paris."


async def test_an_answer_cut_while_thinking_says_so() -> None:
    text, final, _ = await play(script("<think>I need to think about this for a long"), "collapsed")
    assert "cut off before it began" in text and isinstance(final, Done) and final.text == ""


async def test_the_preamble_comes_before_the_first_text_or_the_end() -> None:
    notes = notes_block(["report.pdf: read the first 3 of 9 pages"])
    text, _, _ = await play(script("Hello there."), "collapsed", preamble=notes)
    assert text == notes + "Hello there."
    text, _, _ = await play([Failed(FailureKind.BUSY, "busy")], "collapsed", preamble=notes)
    assert text == notes
    assert answer_only(notes + "Hello there.") == "Hello there."


async def test_cancelling_the_shown_handle_cancels_the_job() -> None:
    cancelled: list[str] = []
    feed = JobFeed(Job.ask("q"), cancelled.append)
    hide_thinking(feed.handle, "collapsed").cancel()
    assert cancelled == [feed.job.id]
