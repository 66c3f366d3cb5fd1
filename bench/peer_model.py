"""The engbot vs llama-server benchmark's data: configurations, questions, answers and bursts, and their summaries
(pure; ``bench/peer_bench.py`` runs them, ``bench/peer_report.py`` writes them out)."""

from __future__ import annotations

import math
import shlex
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from bench import llama_server

SYSTEM = "You are a helpful assistant."
BUSY_SUFFIX = " + one CPU busy"


# Distinct questions of similar length, each beginning differently, so no request reuses another's prompt
# beyond the shared system prompt (llama-server keeps each slot's last prompt in its cache).
PROMPTS = (
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a bicycle stays upright while it is moving forward.",
    "Describe the water cycle, from the ocean to the clouds and back again.",
    "Compose a poem about autumn leaves falling in a quiet city park.",
    "Why is the sky blue during the day and red at sunset?",
    "Tell me about a typical day in the life of a village baker.",
    "How do vaccines teach the immune system to fight a disease?",
    "Draft a letter to a friend about a hiking trip in the mountains.",
    "List the main differences between a violin and a cello.",
    "Summarize the history of the printing press in a few paragraphs.",
    "Give advice to a student who is starting to learn chemistry.",
    "Imagine a city on Mars in the year 2200 and describe its streets.",
    "Compare trains and airplanes for travelling across a continent.",
    "Outline a plan for a small vegetable garden on a balcony.",
    "What makes a good cup of tea, and how should it be brewed?",
    "Invent a board game for four players and explain its rules.",
    "Recount the journey of a letter through the postal system.",
    "Help me understand how a refrigerator keeps food cold.",
    "Paint a picture in words of a busy harbour at dawn.",
    "Teach me the basic rules of chess, piece by piece.",
    "Narrate the adventures of a cat lost in a large library.",
    "Should cities ban cars from their centres? Argue both sides.",
    "Create a recipe for a simple soup made from winter vegetables.",
    "Picture a forest after a heavy snowfall and describe the sounds.",
    "Recommend five habits that help people sleep better at night.",
    "Sketch the life cycle of a star, from its birth to its end.",
    "Argue for the importance of learning a second language.",
    "Present the plot of a mystery novel set on a night train.",
    "Detail how bees make honey and why they need so much of it.",
    "Predict how people will read books a hundred years from now.",
    "Portray an old fisherman mending his nets by the shore.",
    "Answer a child who asks where the wind comes from.",
)
# sized for C=16: 16 slots of 2048 tokens (engbot's CONTEXT_LENGTH), flash attention as llama-server decides (on
# here: its fastest). Without -c, this llama.cpp gives each slot the model's whole 8192-token context (2.9 GiB of
# KV cache).
LLAMA_NP16 = "-np 16 -c 32768"
WARM_UP = ("Say hello in French.", "Name three colours.", "Count from one to five.", "Spell the word cat.")


@dataclass(frozen=True)
class Config:
    """One side of the comparison: engbot with extra settings, or llama-server with extra arguments."""

    kind: Literal["engbot", "llama-server"]
    extra: tuple[str, ...]  # engbot: NAME=VALUE settings; llama-server: command-line arguments
    busy: bool = False  # another program keeps one CPU busy while this configuration starts and answers

    @property
    def label(self) -> str:
        return (f"{self.kind} " + (" ".join(self.extra) if self.extra else "(defaults)")
                + (BUSY_SUFFIX if self.busy else ""))

    def environ(self) -> dict[str, str]:
        out = {}
        for item in self.extra:
            name, sep, value = item.partition("=")
            if not sep or not name:
                raise ValueError(f"expected NAME=VALUE, got {item!r}")
            out[name] = value
        return out


def parse_configs(engbot: Sequence[str], llama: Sequence[str], neighbour: bool = False) -> list[Config]:
    """``--engbot "A=1 B=2"`` and ``--llama "-np 16"`` options to configurations (each checked once here); with
    ``neighbour``, each also runs a second time beside a program that keeps one CPU busy."""
    configs = [Config("engbot", tuple(shlex.split(e))) for e in engbot]
    configs += [Config("llama-server", tuple(shlex.split(a))) for a in llama]
    if neighbour:
        configs += [Config(c.kind, c.extra, busy=True) for c in configs]
    for c in configs:
        if c.kind == "engbot":
            c.environ()
    if len({c.label for c in configs}) != len(configs):
        raise ValueError("a configuration is listed twice")
    return configs


def prompts_for(concurrency: int, round_no: int) -> list[str]:
    """C distinct prompts, the same for every configuration of one round; rounds rotate through the set."""
    if concurrency > len(PROMPTS):
        raise ValueError(f"at most {len(PROMPTS)} concurrent requests (distinct prompts)")
    start = round_no * concurrency
    return [PROMPTS[(start + i) % len(PROMPTS)] for i in range(concurrency)]


def burst_groups(concurrency: int, round_no: int, min_answers: int) -> list[list[str]]:
    """The prompt groups of one round at one C: enough bursts of C, one after the other, for ``min_answers``
    answers (so a TTFT p95 at C=1 rests on more than one answer per round); all prompts distinct."""
    repeats = max(1, math.ceil(min_answers / concurrency))
    return [prompts_for(concurrency, round_no * repeats + k) for k in range(repeats)]


@dataclass(frozen=True)
class Answer:
    ttft: float  # submit -> first text, s
    seconds: float  # submit -> end
    tokens: int  # generated tokens, as the server counts them
    prompt_tokens: int
    cached_tokens: int = 0  # prompt tokens the server took from its cache
    worker: int | None = None  # engbot: the replica that answered


@dataclass
class Burst:
    config: str
    concurrency: int
    round: int
    answers: list[Answer]
    wall: float
    pss_parts: tuple[float, ...]  # MiB per process after the burst: llama-server; engbot's engine, replicas...
    load: float  # 1-minute load average when the burst started

    @property
    def pss_mib(self) -> float:
        return sum(self.pss_parts)

    @property
    def tokens(self) -> int:
        return sum(a.tokens for a in self.answers)

    @property
    def rate(self) -> float:
        return self.tokens / self.wall


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass(frozen=True)
class Summary:
    config: str
    concurrency: int
    rates: tuple[float, ...]  # tok/s of each round
    ttft_p50: float
    ttft_p95: float
    ttft_max: float
    pss_mib: float  # median of the rounds
    answers: int
    tokens: tuple[int, int]  # min, max per answer
    prompt_tokens: tuple[int, int]
    cached_tokens: tuple[int, int]
    workers: dict[int, int] = field(default_factory=dict)  # engbot: answers per replica, all rounds

    @property
    def rate(self) -> float:
        return statistics.median(self.rates)


def summarize(bursts: Sequence[Burst]) -> dict[tuple[str, int], Summary]:
    groups: dict[tuple[str, int], list[Burst]] = {}
    for b in bursts:
        groups.setdefault((b.config, b.concurrency), []).append(b)
    out = {}
    for (config, c), group in groups.items():
        answers = [a for b in group for a in b.answers]
        ttfts = [a.ttft for a in answers]
        tokens = [a.tokens for a in answers]
        prompt = [a.prompt_tokens for a in answers]
        cached = [a.cached_tokens for a in answers]
        workers = Counter(a.worker for a in answers if a.worker is not None)
        out[config, c] = Summary(
            config, c, tuple(b.rate for b in group), percentile(ttfts, 50), percentile(ttfts, 95), max(ttfts),
            statistics.median(b.pss_mib for b in group), len(answers), (min(tokens), max(tokens)),
            (min(prompt), max(prompt)), (min(cached), max(cached)), dict(sorted(workers.items())))
    return out


@dataclass
class Run:
    configs: list[Config]
    concurrency: list[int]
    rounds: int
    tokens: int
    bursts: list[Burst] = field(default_factory=list)
    reported: dict[str, dict[str, str]] = field(default_factory=dict)  # config label -> its settings
    commands: dict[str, str] = field(default_factory=dict)
    build: llama_server.Build | None = None
    server_version: str = ""
    library_info: str = ""
    loads: list[float] = field(default_factory=list)
    min_answers: int = 1  # per round, C and configuration: bursts of C one after the other until there are as many
