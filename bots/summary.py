"""Planning a thread's summary: the thread as a transcript, cut into parts that each fit the model's context, and
the prompts for the parts and for the summary of their summaries. Pure: ``bots/summarize.py`` runs the jobs."""

from __future__ import annotations

from collections.abc import Sequence

from bots.conversation import Said
from bots.tokens import cut_to_bytes

PART_PROMPT = ("Here is part {k} of {n} of a conversation, in the order it was written:\n\n{text}\n\n"
               "Summarize this part in a few sentences: what was asked, said and decided, and what is still open.")
WHOLE_PROMPT = ("Here is a conversation, in the order it was written:\n\n{text}\n\n"
                "Summarize it in a few sentences: what was asked, said and decided, and what is still open.")
COMBINE_PROMPT = ("Here are summaries of consecutive parts of one conversation, oldest first:\n\n{text}\n\n"
                  "Write one short summary of the whole conversation from them: what was asked, said and decided, "
                  "and what is still open.")
PROMPT_FRAME = max(len(PART_PROMPT), len(WHOLE_PROMPT), len(COMBINE_PROMPT)) + 16  # bytes around the text
BOT_NAME = "Assistant"
CUT = " […]"


def transcript(said: Sequence[Said]) -> list[str]:
    """One line a message, oldest first, each with who wrote it ("Ann: ..."; the bot is "Assistant")."""
    lines = []
    for message in said:
        text = " ".join(message.text.split())
        if text:
            who = BOT_NAME if message.speaker is None else (message.name or message.speaker)
            lines.append(f"{who}: {text}")
    return lines


def split_parts(lines: Sequence[str], budget_bytes: int) -> list[list[str]]:
    """Consecutive lines packed into parts of at most ``budget_bytes`` (UTF-8, a line break between lines). A
    line longer than that alone is cut (and marked)."""
    budget = max(64, budget_bytes)
    parts: list[list[str]] = []
    current: list[str] = []
    size = 0
    for line in lines:
        data = len(line.encode())
        if data > budget:
            line = cut_to_bytes(line, budget - len(CUT.encode())) + CUT
            data = len(line.encode())
        if current and size + 1 + data > budget:
            parts.append(current)
            current, size = [], 0
        size += data + (1 if current else 0)
        current.append(line)
    if current:
        parts.append(current)
    return parts


def part_prompt(lines: Sequence[str], k: int, n: int) -> str:
    text = "\n".join(lines)
    return WHOLE_PROMPT.format(text=text) if n == 1 else PART_PROMPT.format(k=k, n=n, text=text)


def combine_prompt(summaries: Sequence[str], first: int = 1) -> str:
    """The prompt that makes one summary of ``summaries`` (of parts ``first``, ``first + 1``... of the thread)."""
    text = "\n\n".join(f"Part {first + i}: {' '.join(s.split())}" for i, s in enumerate(summaries))
    return COMBINE_PROMPT.format(text=text)


def group(summaries: Sequence[str], budget_bytes: int) -> list[list[str]]:
    """Consecutive summaries packed into groups whose combining prompt fits ``budget_bytes``: at least two a group,
    so each round of combining makes fewer."""
    lines = [f"Part 0000: {' '.join(s.split())}" for s in summaries]
    groups = split_parts(lines, budget_bytes)
    sizes = [len(g) for g in groups]
    if len(groups) > 1 and min(sizes) < 2:  # one summary alone would not shrink: pair it with its neighbour
        sizes = [2] * (len(summaries) // 2) + ([1] if len(summaries) % 2 else [])
        if sizes[-1] == 1 and len(sizes) > 1:
            sizes[-2:] = [3]
    out, start = [], 0
    for size in sizes:
        out.append(list(summaries[start:start + size]))
        start += size
    return out


def halve(lines: Sequence[str], smallest: int = 64) -> list[list[str]] | None:
    """``lines`` in two halves (by count), or one line cut to half its bytes (and marked); None when a single line
    is already no longer than ``smallest`` bytes. For a part the engine found too long for the context."""
    if len(lines) >= 2:
        middle = len(lines) // 2
        return [list(lines[:middle]), list(lines[middle:])]
    if not lines or len(lines[0].encode()) <= smallest:
        return None
    line = lines[0].removesuffix(CUT)
    return [[cut_to_bytes(line, len(line.encode()) // 2) + CUT]]
