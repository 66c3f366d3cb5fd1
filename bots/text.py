"""Text helpers shared by the adapters: splitting long answers, and Markdown to Slack mrkdwn."""

from __future__ import annotations

import re
from collections.abc import Callable

FENCE = "```"


def _same(text: str) -> str:
    return text


def split_message(text: str, limit: int, render: Callable[[str], str] = _same) -> list[str]:
    """Split ``text`` into messages whose rendering (``render``, e.g. Markdown to mrkdwn) holds at most ``limit``
    characters; returns them rendered.

    Prefers paragraph breaks, then line breaks, then sentence ends, then spaces. A split never falls inside a
    code block: when a block alone is longer than ``limit``, it is closed at the cut and reopened (with its
    language tag) in the next chunk, so every chunk renders on its own.
    """
    if limit < 32:
        raise ValueError("limit too small")
    full, _, last = paginate(text, limit, render)
    return [c for c in (*full, last) if c.strip()]


def paginate(text: str, limit: int, render: Callable[[str], str] = _same, *,
             reserve: int = 0) -> tuple[list[str], str, str]:
    """Split full messages off the front of ``text`` until what is left, rendered, fits in ``limit`` with
    ``reserve`` characters to spare (for a streaming cursor or a note). The limit holds for the rendered text,
    which is what a platform counts: rendering can make text longer (Slack escapes ``&``, ``<``, ``>``).

    Returns the full messages (rendered, each at most ``limit`` characters), the rest as raw text (to stream
    more into) and the rest rendered (trailing white space left out).
    """
    full: list[str] = []
    shown = render(text.rstrip())
    while text.strip() and len(shown) + reserve > limit:
        head, text = _split_off(text, limit, render)
        full.append(head)
        shown = render(text.rstrip())
    return full, text, shown


def _split_off(text: str, limit: int, render: Callable[[str], str]) -> tuple[str, str]:
    """The first message of ``text`` (rendered, at most ``limit`` characters, not empty) and the raw rest."""
    body = text.rstrip()
    trail = text[len(body):]  # kept on the rest: the next piece of a stream may continue after it
    budget = limit
    while budget >= 16:
        cut, reopen = _cut(body, budget)
        head = body[:cut].rstrip() + ("\n" + FENCE if reopen else "")
        shown = render(head)
        if len(shown) <= limit and head.strip() and cut > len(reopen):
            rest = reopen + body[cut:] if reopen else body[cut:].lstrip(" \n")
            return shown, rest + trail
        # the rendering grew past the limit (or the cut made no progress): try again with less raw text
        budget = min(budget - 1, budget * limit // max(len(shown), 1))
    # only text whose rendering grows several times over gets here: cut anywhere
    size = min(len(body), limit)
    while size > 1 and len(render(body[:size])) > limit:
        size = max(1, min(size - 1, size * limit // len(render(body[:size]))))
    return render(body[:size]), body[size:] + trail


def _fences(text: str) -> list[int]:
    return [m.start() for m in re.finditer(r"^[ \t]*```", text, flags=re.MULTILINE)]


def _cut(text: str, limit: int) -> tuple[int, str]:
    """Where to cut ``text`` (at most ``limit - 4`` so a closing fence fits), and the fence to reopen with."""
    window = text[: limit - 4]
    fences = _fences(text)
    # spans of code blocks: between an opening fence and its closing one
    spans = [(fences[i], fences[i + 1] if i + 1 < len(fences) else len(text)) for i in range(0, len(fences), 2)]

    def in_code(pos: int) -> bool:
        return any(a < pos <= b for a, b in spans)

    # a boundary outside code, preferably past a third of the limit (no tiny chunks), before cutting into code
    for shortest in (limit // 3, 1):
        for pattern in (r"\n\s*\n", r"\n", r"[.!?。！？](?=\s)", r" "):
            candidates = [m.end() for m in re.finditer(pattern, window) if m.end() >= shortest]
            candidates = [c for c in candidates if not in_code(c)]
            if candidates:
                return candidates[-1], ""
    # no boundary outside code: cut inside the code block at a line end and reopen it
    for a, b in spans:
        if a < len(window) <= b:
            newline = window.rfind("\n", a + 1)
            cut = newline + 1 if newline > a + 3 else len(window)
            header = text[a : text.find("\n", a) if "\n" in text[a:] else len(text)].strip()
            return cut, header + "\n"
    return len(window), ""


# ---- Markdown -> Slack mrkdwn ----

_CODE = re.compile(r"(```.*?(?:```|\Z)|`[^`\n]+`)", re.DOTALL)  # an unclosed block (mid-stream) runs to the end


def escape_slack(text: str) -> str:
    """Escape the three characters Slack treats as markup."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def markdown_to_mrkdwn(text: str) -> str:
    """Convert the Markdown a model writes to Slack's mrkdwn: bold, italics, strikethrough, links, headings.

    Code spans and blocks keep their content (escaped only); a code block's language tag is dropped, as Slack
    shows it as text.
    """
    parts = _CODE.split(text)
    out: list[str] = []
    for i, part in enumerate(parts):
        if i % 2 == 1:  # code
            if part.startswith(FENCE):
                body = part[3:-3] if part.endswith(FENCE) and len(part) >= 6 else part[3:]
                first, _, rest = body.partition("\n")
                if first.strip() and " " not in first.strip() and rest:
                    body = rest  # drop a language tag
                if not body.strip():  # a fence just opened, mid-stream
                    continue
                out.append(FENCE + escape_slack(body) + FENCE)
            else:
                out.append(escape_slack(part))
            continue
        out.append(_inline(escape_slack(part)))
    return "".join(out)


_BOLD, _ITALIC = "\x01", "\x02"  # stand-ins, so that one rule's output is not read by the next


def _inline(text: str) -> str:
    text = re.sub(r"\[([^\]\n]+)\]\((https?://[^)\s]+)\)", r"<\2|\1>", text)  # links
    text = re.sub(r"^#{1,6}\s+(.+?)\s*#*$",  # headings -> a bold line
                  lambda m: _BOLD + re.sub(r"\*\*|__", "", m.group(1)) + _BOLD, text, flags=re.MULTILINE)
    text = re.sub(r"^(\s*)[-*+]\s+", r"\1• ", text, flags=re.MULTILINE)  # bullets
    text = re.sub(r"\*\*\*(?!\s)(.+?)(?<!\s)\*\*\*", _BOLD + _ITALIC + r"\1" + _ITALIC + _BOLD, text)
    text = re.sub(r"(\*\*|__)(?!\s)(.+?)(?<!\s)\1", _BOLD + r"\2" + _BOLD, text)
    text = re.sub(r"(?<![*\w])\*(?!\s)([^*\n]+?)(?<!\s)\*(?![*\w])", _ITALIC + r"\1" + _ITALIC, text)
    text = re.sub(r"~~(.+?)~~", r"~\1~", text)
    return text.replace(_BOLD, "*").replace(_ITALIC, "_")


# ---- Markdown for Slack's own streaming (chat.appendStream takes standard Markdown) ----

# Slack's mention syntax: a model that writes it would ping a channel or a person
_MENTION = re.compile(r"<(?=(?:!(?:channel|here|everyone|subteam\^)|@[UWB][A-Z0-9]))")
_ZWSP = "\u200b"


def defuse_markdown(text: str) -> str:
    """``text`` with Slack's mention markup (``<!channel>``, ``<!here>``, ``<@U0123>``...) broken by an invisible
    space, so that an answer streamed as Markdown never pings anyone; everything else stays as the model wrote
    it."""
    return _MENTION.sub("<" + _ZWSP, text)


def held_back(text: str) -> int:
    """How many characters at the end of ``text`` to keep from a stream for now: an unfinished ``<...`` that
    may still become mention markup once the next piece arrives."""
    start = text.rfind("<")
    return len(text) - start if start >= 0 and len(text) - start < 16 and ">" not in text[start:] else 0


def stream_cut(text: str, sent: int, limit: int) -> tuple[str, str]:
    """Where a streamed message that grew past ``limit`` characters ends, when its first ``sent`` characters are
    shown already (and cannot be taken back): the text it still gets, and the text the next message starts with.
    Cuts at a paragraph break, else a line break, else a space, after ``sent``; a code block open at the cut is
    closed there and reopened (with its language tag) in the next message."""
    end = max(sent, limit - 4)  # room for a closing fence
    window = text[sent:end]
    cut = end
    for separator in ("\n\n", "\n", " "):
        at = window.rfind(separator)
        if at > 0:
            cut = sent + at + len(separator)
            break
    head, rest = text[sent:cut], text[cut:]
    fences = _fences(text[:cut])
    if len(fences) % 2 == 1:  # inside a code block
        opening = text[fences[-1]:cut].split("\n", 1)[0].strip()
        head = head.rstrip("\n") + "\n" + FENCE
        rest = opening + "\n" + rest
    return head, rest
