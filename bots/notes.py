"""What the bot shows in an answer's message besides the model's answer: notes above it (a file that was cut or
skipped) and a reasoning model's thinking (a short note, or the thinking itself). Each is written here and taken
out here again, so the conversation read back from a thread gives the model its earlier answers only.

    text = notes_block(("📎 report.pdf: read the first 30 of 120 pages",)) + answer
    answer_only(text) == answer
"""

from __future__ import annotations

import re
from collections.abc import Sequence

NOTE_MARK = "📎"  # a note about the question's files
THINKING_MARK = "💭"
# collapsed: one line instead of the thinking; on: the thinking between these two lines
THINKING_NOTE = "_💭 Thought it through ({words} words, hidden)._"
THINKING_CUT = "_💭 Thought it through ({words} words, hidden), but the answer was cut off before it began._"
THINKING_OPEN = "💭 _Thinking:_"
THINKING_CLOSE = "💭 _Done thinking._"

_NOTE_LINE = re.compile(rf"^_?{NOTE_MARK}[^\n]*\n")
_THOUGHT_LINE = re.compile(rf"^_?{THINKING_MARK} Thought it through [^\n]*\n?")
_THINKING_BLOCK = re.compile(rf"^{re.escape(THINKING_OPEN)}\n.*?(?:\n{re.escape(THINKING_CLOSE)}\n?|\Z)", re.DOTALL)


def note_line(text: str) -> str:
    """One note as shown (italic): ``_📎 report.pdf: read the first 30 of 120 pages_``."""
    return f"_{NOTE_MARK} {text.strip()}_"


def notes_block(notes: Sequence[str]) -> str:
    """The notes an answer starts with, one line each, then a blank line; "" for none."""
    if not notes:
        return ""
    return "\n".join(note_line(n) for n in notes) + "\n\n"


def answer_only(text: str) -> str:
    """A message of the bot as the conversation should hold it: without the notes above the answer and without
    shown thinking (the note of hidden thinking, or the thinking itself)."""
    text = text.lstrip()
    while True:
        before = text
        text = _NOTE_LINE.sub("", text, count=1).lstrip("\n")
        text = _THOUGHT_LINE.sub("", text, count=1).lstrip("\n")
        text = _THINKING_BLOCK.sub("", text, count=1).lstrip("\n")
        if text == before:
            return text
