"""Text helpers: splitting long answers, and Markdown to Slack mrkdwn."""

from __future__ import annotations

import re

import pytest

from bots.text import escape_slack, markdown_to_mrkdwn, paginate, split_message

PARAGRAPHS = "\n\n".join(f"Paragraph {i}. " + "word " * 30 for i in range(6))
CODE = "```python\n" + "".join(f"print({i})  # line {i}\n" for i in range(12)) + "```"


def code_blocks_balanced(chunk: str) -> bool:
    return len(re.findall(r"^\s*```", chunk, flags=re.MULTILINE)) % 2 == 0


def letters(text: str) -> str:
    """The text without fences and whitespace: what a split must keep."""
    return re.sub(r"```\w*|\s", "", text)


def rendered_letters(mrkdwn: str) -> str:
    """The same for mrkdwn, where a fence never has a language tag (text may follow it at once)."""
    return re.sub(r"```|\s", "", mrkdwn)


def test_short_text_is_one_chunk() -> None:
    assert split_message("Hello there.", 100) == ["Hello there."]
    assert split_message("", 100) == []


def test_a_limit_too_small_to_hold_a_fence_is_refused() -> None:
    with pytest.raises(ValueError):
        split_message("text", 10)


@pytest.mark.parametrize("limit", [64, 100, 200, 500])
def test_chunks_fit_the_limit_and_keep_every_word(limit: int) -> None:
    text = PARAGRAPHS + "\n\n" + CODE + "\n\nThe end. " + "x" * 150
    chunks = split_message(text, limit)
    assert all(len(c) <= limit for c in chunks)
    assert all(code_blocks_balanced(c) for c in chunks)
    assert letters("\n".join(chunks)) == letters(text)


def test_splits_fall_on_paragraph_breaks_first() -> None:
    chunks = split_message(PARAGRAPHS, 400)
    assert len(chunks) > 1
    assert all(c.startswith("Paragraph ") for c in chunks)
    assert all(c.rstrip().endswith("word") for c in chunks)


def test_without_paragraphs_splits_fall_on_sentence_ends() -> None:
    text = " ".join(f"Sentence number {i} has a few words in it." for i in range(20))
    chunks = split_message(text, 150)
    assert len(chunks) > 1 and all(c.endswith(".") for c in chunks)


@pytest.mark.parametrize("intro", [5, 15])
def test_a_code_block_that_fits_is_never_split(intro: int) -> None:
    text = "Intro paragraph. " * intro + "\n\n" + CODE + "\n\nOutro. " + "more " * 20
    chunks = split_message(text, len(CODE) + 20)
    holding = [c for c in chunks if "```" in c]
    assert len(holding) == 1 and CODE in holding[0]


def test_a_code_block_longer_than_the_limit_is_closed_and_reopened_with_its_language() -> None:
    chunks = split_message(CODE, 120)
    assert len(chunks) > 1
    assert all(len(c) <= 120 and code_blocks_balanced(c) for c in chunks)
    assert all(c.startswith("```python\n") for c in chunks)
    assert all(c.rstrip().endswith("```") for c in chunks)
    lines = [line for c in chunks for line in c.splitlines() if not line.startswith("```")]
    assert lines == [f"print({i})  # line {i}" for i in range(12)]


ESCAPES = "\n\n".join(f"Line {i}: R&D <-> Q&A, so a < b && c > d." for i in range(20))
ESCAPED_CODE = "```c\n" + "".join(f"if (a < {i} && b > {i}) x &= {i};\n" for i in range(10)) + "```"


@pytest.mark.parametrize("limit", [64, 150, 400])
def test_chunks_fit_the_limit_as_rendered_for_slack(limit: int) -> None:
    text = ESCAPES + "\n\n" + ESCAPED_CODE + "\n\nDone & dusted."
    assert len(markdown_to_mrkdwn(text)) > 1.3 * len(text)  # Slack's escapes make it longer
    chunks = split_message(text, limit, markdown_to_mrkdwn)
    assert all(len(c) <= limit for c in chunks), [len(c) for c in chunks]
    assert all(code_blocks_balanced(c) for c in chunks)
    assert rendered_letters("\n".join(chunks)) == rendered_letters(markdown_to_mrkdwn(text))


def test_text_that_renders_many_times_longer_is_still_cut_to_the_limit() -> None:
    chunks = split_message("&" * 300, 64, markdown_to_mrkdwn)
    assert all(0 < len(c) <= 64 for c in chunks) and "".join(chunks) == "&amp;" * 300


def test_paginate_keeps_room_for_a_suffix_and_returns_the_raw_rest() -> None:
    text = "First sentence here. Second one & more. Third, still going "
    full, rest, shown = paginate(text, 64, markdown_to_mrkdwn)
    assert full == [] and rest == text and shown == markdown_to_mrkdwn(text.rstrip())
    full, rest, shown = paginate(text, 64, markdown_to_mrkdwn, reserve=20)
    assert full and all(len(c) <= 64 for c in full) and len(shown) + 20 <= 64
    assert rest.endswith("going ")  # the trailing space stays on the rest: the next piece continues after it
    assert rendered_letters("".join(full) + shown) == rendered_letters(markdown_to_mrkdwn(text))


@pytest.mark.parametrize(("markdown", "mrkdwn"), [
    ("**bold** and __also bold__", "*bold* and *also bold*"),
    ("*italic* and _italic_", "_italic_ and _italic_"),
    ("***both***", "*_both_*"),
    ("~~gone~~", "~gone~"),
    ("[the docs](https://docs.python.org/3/)", "<https://docs.python.org/3/|the docs>"),
    ("# Title\n## Sub", "*Title*\n*Sub*"),
    ("- one\n* two\n  + three", "• one\n• two\n  • three"),
    ("a < b & c > d", "a &lt; b &amp; c &gt; d"),
    ("2 * 3 * 4", "2 * 3 * 4"),
    ("snake_case_name", "snake_case_name"),
])
def test_markdown_becomes_mrkdwn(markdown: str, mrkdwn: str) -> None:
    assert markdown_to_mrkdwn(markdown) == mrkdwn


def test_code_keeps_its_text_escaped_only() -> None:
    assert markdown_to_mrkdwn("use `**kwargs` and `a<b`") == "use `**kwargs` and `a&lt;b`"
    block = "```python\nif a < b and **x**:\n    print('[x](y)')\n```"
    assert markdown_to_mrkdwn(block) == "```if a &lt; b and **x**:\n    print('[x](y)')\n```"
    assert markdown_to_mrkdwn("```\nplain\n```") == "```\nplain\n```"


def test_an_unclosed_code_block_while_streaming_stays_code() -> None:
    assert markdown_to_mrkdwn("Here:\n```python\nx = **y**") == "Here:\n```x = **y**```"
    assert markdown_to_mrkdwn("Here:\n```") == "Here:\n"


def test_escape_slack_escapes_the_three_markup_characters() -> None:
    assert escape_slack("<@U1> & <#C1>") == "&lt;@U1&gt; &amp; &lt;#C1&gt;"
