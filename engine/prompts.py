"""Chat templates and the token budget.

A template turns a conversation into one prompt string plus the strings that end the answer. The GGUF file's own
Jinja template is used where there is one (rendered the way llama-cpp-python's chat completion renders it, so
the engine answers exactly as the library would); built-in templates cover files without one.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from engine.errors import ConfigError, PromptTooLong
from engine.types import Turn


@dataclass(frozen=True, slots=True)
class Rendered:
    prompt: str
    stop: tuple[str, ...]
    add_bos: bool  # whether the tokenizer should still add BOS (the template did not write it)


Template = Callable[[Sequence[Turn]], Rendered]


def chatml(turns: Sequence[Turn]) -> Rendered:
    body = "".join(f"<|im_start|>{t.role}\n{t.content}<|im_end|>\n" for t in turns)
    return Rendered(body + "<|im_start|>assistant\n", ("<|im_end|>", "<|im_start|>"), add_bos=False)


def oasst(turns: Sequence[Turn]) -> Rendered:
    """The Pythia OpenAssistant format: ``<|prompter|>{text}<|endoftext|><|assistant|>``."""
    tags = {"system": "<|system|>", "user": "<|prompter|>", "assistant": "<|assistant|>"}
    body = "".join(f"{tags[t.role]}{t.content}<|endoftext|>" for t in turns)
    return Rendered(body + "<|assistant|>", ("<|endoftext|>", "<|prompter|>"), add_bos=False)


def llama2(turns: Sequence[Turn]) -> Rendered:
    system = "".join(t.content for t in turns if t.role == "system")
    parts: list[str] = []
    first = True
    for t in turns:
        if t.role == "user":
            text = f"<<SYS>>\n{system}\n<</SYS>>\n\n{t.content}" if first and system else t.content
            parts.append(f"<s>[INST] {text} [/INST]")
            first = False
        elif t.role == "assistant":
            parts.append(f" {t.content} </s>")
    return Rendered("".join(parts), ("[INST]", "</s>"), add_bos=False)


def plain(turns: Sequence[Turn]) -> Rendered:
    names = {"system": "", "user": "User: ", "assistant": "Assistant: "}
    body = "".join(f"{names[t.role]}{t.content}\n\n" for t in turns)
    return Rendered(body + "Assistant:", ("\nUser:",), add_bos=True)


BUILTIN: dict[str, Template] = {"chatml": chatml, "oasst": oasst, "llama2": llama2, "plain": plain}


def jinja_template(source: str, bos_token: str, eos_token: str) -> Template:
    """A GGUF file's own template, rendered with llama-cpp-python's formatter (a sandboxed Jinja environment)."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    formatter = Jinja2ChatFormatter(template=source, eos_token=eos_token, bos_token=bos_token)

    def render(turns: Sequence[Turn]) -> Rendered:
        result = formatter(messages=[{"role": t.role, "content": t.content} for t in turns])  # type: ignore[misc]
        stop = result.stop if isinstance(result.stop, list) else [result.stop] if result.stop else []
        return Rendered(result.prompt, tuple(s for s in stop if s), add_bos=not result.added_special)

    return render


def choose_template(
    setting: str, architecture: str, file_template: str | None, bos_token: str, eos_token: str
) -> tuple[str, Template]:
    """The template a model uses, by the PROMPT_TEMPLATE setting: (its name, the function)."""
    if setting == "auto":
        setting = "gguf" if file_template else "oasst" if architecture in ("gpt_neox", "dolly-v2") else "chatml"
    if setting == "gguf":
        if not file_template:
            raise ConfigError("PROMPT_TEMPLATE", "gguf", "the model file has no chat template; "
                              "use auto, " + ", ".join(BUILTIN))
        return "gguf", jinja_template(file_template, bos_token, eos_token)
    return setting, BUILTIN[setting]


_CONTROL = re.compile(r"<\|([^|\s]{1,64})\|>|</?s>|\[/?INST\]")


def defuse(text: str) -> str:
    """Message text with the built-in templates' markers (``<|im_end|>``, ``<|endoftext|>``, ``[INST]``) broken
    up. For models whose vocabulary has no special token for a marker (ChatML on a gpt_neox model, Llama-2's
    ``[INST]``), the marker is plain text, and a user could end their turn early or speak as the assistant."""
    return _CONTROL.sub(lambda m: m.group(0).replace("|", "\u2758").replace("<", "\u2039").replace("[", "\u27e6"),
                        text)


Tokenize = Callable[[str, bool, bool], list[int]]  # (text, add_bos, special) -> tokens
_MARKER = re.compile(r"<\|?/?[^<>|\s]{1,32}\|?>|\[/?[A-Z_]{2,16}\]")  # <|im_end|>, </s>, [INST], [/INST]
_PLAIN_MARKERS: weakref.WeakKeyDictionary[Template, frozenset[str]] = weakref.WeakKeyDictionary()


def plain_markers(template: Template, tokenize: Tokenize) -> frozenset[str]:
    """Markers a file's own template writes (``[INST]``, ``</s>``) that its vocabulary has no special token for:
    typed by a user, they would make exactly the tokens of a real turn boundary (Llama-2, Mistral v0.1 files)."""
    if template not in _PLAIN_MARKERS:
        rendered = ""
        for probe in ([Turn("system", "s"), Turn("user", "u"), Turn("assistant", "a"), Turn("user", "v")],
                      [Turn("user", "u"), Turn("assistant", "a"), Turn("user", "v")]):
            try:
                rendered = template(probe).prompt
                break
            except Exception:  # e.g. a template that refuses a system turn
                continue
        _PLAIN_MARKERS[template] = frozenset(
            m for m in set(_MARKER.findall(rendered)) if tokenize(m, False, True) == tokenize(m, False, False))
    return _PLAIN_MARKERS[template]


def defuse_markers(text: str, markers: frozenset[str]) -> str:
    """``text`` with each of ``markers`` broken up (its first character swapped for a look-alike)."""
    for marker in markers:
        text = text.replace(marker, {"<": "\u2039", "[": "\u27e6"}.get(marker[0], "") + marker[1:])
    return text
_MARK = re.compile("\ue000([0-9]+)\ue001")  # stands for message i while the template renders


def tokenize_conversation(template: Template, tokenize: Tokenize, turns: Sequence[Turn],
                          trusted: int = 0) -> tuple[list[int], tuple[str, ...]]:
    """Tokens of the rendered conversation, where only the template's own text can make special tokens.

    The prompt is one string with the template's control tokens written as text (``<|im_start|>``), and the
    tokenizer must parse them. Message text must not get the same treatment: a user who types ``<|im_end|>`` (or
    Gemma's ``<end_of_turn>``, Mistral's ``[INST]``) would otherwise close their turn and write the assistant's.
    Messages that hold such text are tokenized on their own, as plain text, between the template's pieces; all
    others keep the exact tokenization of the whole prompt. The first ``trusted`` turns (the operator's system
    prompt) are taken as they are.
    """
    rendered = template(turns)
    tokens = tokenize(rendered.prompt, rendered.add_bos, True)
    suspicious = [i for i, t in enumerate(turns)
                  if i >= trusted and tokenize(t.content, False, True) != tokenize(t.content, False, False)]
    if not suspicious:
        return tokens, rendered.stop
    marked = template([Turn(t.role, f"\ue000{i}\ue001") if i in suspicious else t for i, t in enumerate(turns)])
    parts = _MARK.split(marked.prompt)
    tokens = []
    for k, part in enumerate(parts):
        if k % 2:  # a message's text
            tokens += tokenize(turns[int(part)].content, False, False)
        elif part or k == 0:  # the template's text
            tokens += tokenize(part, k == 0 and marked.add_bos, True)
    return tokens, rendered.stop


def fit_prompt(
    template: Template,
    tokenize: Tokenize,
    system_prompt: str,
    turns: Sequence[Turn],
    budget: int,
    prefill: str = "",
) -> tuple[list[int], tuple[str, ...], int]:
    """Tokens of the longest recent part of the conversation that fits ``budget`` tokens.

    Drops the oldest turns first (never the newest); a conversation always starts with a user turn. ``prefill``
    is the start of the assistant's answer, written after the template's generation prompt for the model to go
    on from; it is tokenized as plain text, like message text. Returns the tokens, the stop strings and how many
    turns were dropped. Raises ``PromptTooLong`` if the newest message (with the prefill) alone does not fit.
    """
    if not turns:
        raise ValueError("a job needs at least one turn")
    if template in BUILTIN.values():  # their markers may be plain text to the model's vocabulary
        turns = [Turn(t.role, defuse(t.content)) for t in turns]
        prefill = defuse(prefill)
    elif markers := plain_markers(template, tokenize):  # the file's own template, with plain-text markers
        turns = [Turn(t.role, defuse_markers(t.content, markers)) for t in turns]
        prefill = defuse_markers(prefill, markers)
    system = (Turn("system", system_prompt),) if system_prompt else ()
    tail = tokenize(prefill, False, False) if prefill else []
    start = 0
    while True:
        kept = list(turns[start:])
        while len(kept) > 1 and kept[0].role != "user":
            kept.pop(0)
        tokens, stop = tokenize_conversation(template, tokenize, [*system, *kept], trusted=len(system))
        if len(tokens) + len(tail) <= budget:
            return tokens + tail, stop, len(turns) - len(kept)
        if len(kept) <= 1:
            what = "the message and the answer so far are" if tail else "the message is"
            raise PromptTooLong(
                f"{what} too long for this model: about {len(tokens) + len(tail)} tokens, and at most {budget} "
                "fit with room for the answer. Please shorten it."
            )
        start = len(turns) - len(kept) + 1
