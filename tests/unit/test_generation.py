"""The token loop: stop strings never leak, even split across tokens; UTF-8 split across tokens survives."""

from __future__ import annotations

from collections.abc import Iterator

from engine.backends.base import ModelInfo
from engine.generation import generate_text
from engine.types import FailureKind, GenParams

EOS = 0


class ScriptedBackend:
    """A stand-in model that 'generates' a fixed sequence of byte pieces (the real ones are tested elsewhere)."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = [b"<eos>", *pieces]

    def load(self) -> ModelInfo:
        return ModelInfo("scripted", "none", 64, None, "", "<eos>")

    def tokenize(self, text: str, add_bos: bool = True) -> list[int]:
        return [1]

    def generate(self, prompt_tokens: list[int], params: GenParams) -> Iterator[int]:
        yield from range(1, len(self.pieces))
        yield EOS

    def detokenize(self, tokens: list[int]) -> bytes:
        return b"".join(self.pieces[t] for t in tokens)

    def is_eos(self, token: int) -> bool:
        return token == EOS

    def close(self) -> None:
        pass


def run(pieces: list[bytes], stop: tuple[str, ...] = (), max_new: int = 100,
        interrupt_after: int | None = None, ignore_eos: bool = False) -> tuple[str, list[str], int, str]:
    emitted: list[str] = []
    calls = 0

    def interrupt() -> FailureKind | None:
        nonlocal calls
        calls += 1
        return FailureKind.CANCELLED if interrupt_after is not None and calls >= interrupt_after else None

    result = generate_text(ScriptedBackend(pieces), [1], GenParams(max_new_tokens=max_new, ignore_eos=ignore_eos), stop,
                           emitted.append, interrupt)
    # (stopped from outside: the interruption's kind; else why it ended by itself)
    return result.text, emitted, result.completion_tokens, result.ending.interrupted or result.ending.finish_reason


def test_plain_text_until_eos() -> None:
    text, emitted, count, reason = run([b"Hello", b",", b" world"])
    assert (text, "".join(emitted), count, reason) == ("Hello, world", "Hello, world", 3, "stop")


def test_stop_string_split_over_tokens_is_cut_and_never_emitted() -> None:
    text, emitted, _, reason = run([b"Paris", b".", b"<|im", b"_end", b"|>", b"junk"], stop=("<|im_end|>",))
    assert text == "Paris." and "".join(emitted) == "Paris." and reason == "stop"
    assert all("<|" not in piece for piece in emitted)


def test_held_back_prefix_that_is_not_a_stop_is_released() -> None:
    text, emitted, _, _ = run([b"a <", b"b> c"], stop=("<|im_end|>",))
    assert text == "a <b> c" == "".join(emitted)


def test_multibyte_characters_split_across_tokens() -> None:
    snowman = "☃ 東京".encode()
    text, emitted, _, _ = run([snowman[:2], snowman[2:5], snowman[5:]])
    assert text == "☃ 東京" == "".join(emitted)
    assert "\ufffd" not in text


def test_length_limit_and_interrupt() -> None:
    assert run([b"a", b"b", b"c", b"d"], max_new=2)[0::2] == ("ab", 2)
    assert run([b"a", b"b", b"c", b"d"], max_new=2)[3] == "length"
    text, _, count, reason = run([b"a", b"b", b"c", b"d"], interrupt_after=3)
    assert (text, count, reason) == ("abc", 3, "cancelled")


def test_ignore_eos_counts_an_end_of_text_token_as_an_empty_one() -> None:
    class Looping(ScriptedBackend):
        def generate(self, prompt_tokens: list[int], params: GenParams) -> Iterator[int]:
            while True:
                yield 1
                yield EOS

    emitted: list[str] = []
    result = generate_text(Looping([b"ab"]), [1], GenParams(max_new_tokens=5, ignore_eos=True), (),
                           emitted.append, lambda: None)
    assert (result.text, result.completion_tokens, result.ending.finish_reason) == ("ababab", 5, "length")
    assert "".join(emitted) == "ababab"
    assert run([b"ab", b"cd"], max_new=5, ignore_eos=False)[2:] == (2, "stop")
