"""``python -m bench.peer_bench``: engbot against llama.cpp's llama-server, A/B interleaved in one run.

llama-server is built from the llama.cpp vendored by the installed llama-cpp-python (bench/llama_server.py), so
both sides run the same ggml code. For every round and every concurrency C, each configuration is started fresh,
warmed up, and answers a burst of C distinct chat questions submitted at once; the configurations run back to back,
in alternating order from round to round, so load from elsewhere on the machine hits all of them alike. Every
answer is greedy and exactly ``--tokens`` tokens long (end-of-text masked: ``ignore_eos`` on both sides).

Measured per configuration and C: aggregate tokens/s (all tokens of the burst / its wall time; median of the
rounds), time to first token p50/p95 (submit -> first text, over all answers of all rounds; timed in this process
on both sides), and the PSS of the configuration's processes right after the burst (llama-server: its process;
engbot: this process, which runs the engine as an adapter would, plus the replica processes).

    python -m bench.peer_bench --quick
    python -m bench.peer_bench --engbot "" --engbot "PARALLEL_SLOTS=8" --concurrency 1,4,8,16 --rounds 3

Writes docs/bench-peers.md; anything after the ``<!-- notes -->`` line of an existing file is kept.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any, Literal

import psutil

from bench import llama_server
from engine.config import EngineSettings
from engine.types import Done, Failed, GenParams, Job, Started, TextPiece, Turn

SYSTEM = "You are a helpful assistant."
BUSY_SUFFIX = " + one CPU busy"
NOTES_MARKER = "<!-- notes -->"
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


# ---------------------------------------------------------------- configurations


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


@contextlib.contextmanager
def busy_neighbour(busy: bool) -> Any:
    """Another program on the machine: a process that spins on one CPU (the scheduler picks which), started before
    the configuration and stopped after its burst."""
    if not busy:
        yield
        return
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(1.0)  # running, and seen in /proc/stat, before the configuration starts
        yield
    finally:
        spinner.kill()
        spinner.wait()


def engbot_settings(config: Config, max_concurrency: int) -> EngineSettings:
    env = config.environ()
    if max_concurrency > 16:  # the default QUEUE_MAX_SIZE would refuse part of the burst
        env.setdefault("QUEUE_MAX_SIZE", str(max_concurrency))
    return EngineSettings.from_environ(env)


def thread_budget() -> int:
    """The CPU threads engbot uses by default (workers x threads per worker): llama-server gets the same."""
    s = EngineSettings.from_environ({})
    return s.num_threads if s.adaptive_threads else s.num_workers * s.num_threads  # auto: replicas share the CPUs


def llama_args(config: Config, threads: int) -> list[str]:
    args = list(config.extra)
    if not {"-t", "--threads"} & set(args):
        args = ["-t", str(threads), *args]
    return args


def gen_params(tokens: int) -> GenParams:
    """Greedy, exactly ``tokens`` long (end-of-text masked), like the llama-server request."""
    return GenParams(max_new_tokens=tokens, temperature=0.0, repeat_penalty=1.0, ignore_eos=True)


def prompts_for(concurrency: int, round_no: int) -> list[str]:
    """C distinct prompts, the same for every configuration of one round; rounds rotate through the set."""
    if concurrency > len(PROMPTS):
        raise ValueError(f"at most {len(PROMPTS)} concurrent requests (distinct prompts)")
    start = round_no * concurrency
    return [PROMPTS[(start + i) % len(PROMPTS)] for i in range(concurrency)]


# ---------------------------------------------------------------- measurements


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


def pss_mib(pids: Sequence[int]) -> tuple[float, ...]:
    """PSS of each process, MiB (0 for one that is gone)."""
    out = []
    for pid in pids:
        pss = 0
        with contextlib.suppress(psutil.NoSuchProcess):
            pss = psutil.Process(pid).memory_full_info().pss
        out.append(pss / 2**20)
    return tuple(out)


# ---------------------------------------------------------------- engbot side


async def engbot_answer(engine: Any, prompt: str, params: GenParams) -> Answer:
    job = Job(turns=(Turn("user", prompt),), params=params, system_prompt=SYSTEM)
    began = time.perf_counter()
    first = 0.0
    worker = None
    cached = 0
    async for event in engine.submit_nowait(job):
        if isinstance(event, Started):
            worker, cached = event.replica, event.cached_tokens
        elif isinstance(event, TextPiece) and event.text and not first:
            first = time.perf_counter() - began
        elif isinstance(event, Done):
            return Answer(first, time.perf_counter() - began, event.completion_tokens, event.prompt_tokens, cached,
                          worker)
        elif isinstance(event, Failed):
            raise RuntimeError(f"engbot failed an answer: {event.kind}: {event.reason}")
    raise RuntimeError("engbot's event stream ended without Done")


async def engbot_burst(settings: EngineSettings, groups: list[list[str]],
                       tokens: int) -> tuple[list[Answer], float, tuple[float, ...]]:
    """(answers, wall s, PSS MiB of the engine process and each replica after the burst) of a fresh engine; each
    group of prompts is submitted at once, the groups one after the other (wall: the sum of theirs)."""
    from engine.local import Engine

    async with Engine(settings) as engine:
        await asyncio.gather(*(engbot_answer(engine, p, gen_params(16)) for p in WARM_UP))
        answers: list[Answer] = []
        wall = 0.0
        for prompts in groups:
            began = time.perf_counter()
            answers += await asyncio.gather(*(engbot_answer(engine, p, gen_params(tokens)) for p in prompts))
            wall += time.perf_counter() - began
        pids = [os.getpid(), *(r.pid for r in engine.replicas if r.pid and r.alive)]
        return answers, wall, pss_mib(pids)


# ---------------------------------------------------------------- llama-server side


def chat_request(prompt: str, tokens: int) -> dict[str, Any]:
    return {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}],
            "max_tokens": tokens, "ignore_eos": True, "temperature": 0.0, "repeat_penalty": 1.0, "stream": True,
            "stream_options": {"include_usage": True}}


async def llama_answer(session: Any, url: str, prompt: str, tokens: int) -> Answer:
    began = time.perf_counter()
    first = 0.0
    usage: dict[str, Any] = {}
    timings: dict[str, Any] = {}
    async with session.post(url + "/v1/chat/completions", json=chat_request(prompt, tokens)) as resp:
        if resp.status != 200:
            raise RuntimeError(f"llama-server answered {resp.status}: {(await resp.text())[:300]}")
        async for raw in resp.content:
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                break
            chunk = json.loads(data)
            for choice in chunk.get("choices") or ():
                if (choice.get("delta") or {}).get("content") and not first:
                    first = time.perf_counter() - began
            usage = chunk.get("usage") or usage
            timings = chunk.get("timings") or timings
    seconds = time.perf_counter() - began
    completion = int(usage.get("completion_tokens", timings.get("predicted_n", 0)))
    prompt_n = int(usage.get("prompt_tokens", timings.get("prompt_n", 0)))
    cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens", timings.get("cache_n", 0)))
    return Answer(first, seconds, completion, prompt_n, cached)


async def llama_burst(server: llama_server.Server, groups: list[list[str]],
                      tokens: int) -> tuple[list[Answer], float, tuple[float, ...]]:
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(*(llama_answer(session, server.url, p, 16) for p in WARM_UP))
        answers: list[Answer] = []
        wall = 0.0
        for prompts in groups:
            began = time.perf_counter()
            answers += await asyncio.gather(*(llama_answer(session, server.url, p, tokens) for p in prompts))
            wall += time.perf_counter() - began
        return answers, wall, pss_mib([server.proc.pid])


# ---------------------------------------------------------------- the run


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


def engbot_reported(settings: EngineSettings) -> dict[str, str]:
    skip = {"model_path", "system_prompt", "defaults"}
    return {f.name: str(getattr(settings, f.name)) for f in fields(settings) if f.name not in skip}


def burst_groups(concurrency: int, round_no: int, min_answers: int) -> list[list[str]]:
    """The prompt groups of one round at one C: enough bursts of C, one after the other, for ``min_answers``
    answers (so a TTFT p95 at C=1 rests on more than one answer per round); all prompts distinct."""
    repeats = max(1, math.ceil(min_answers / concurrency))
    return [prompts_for(concurrency, round_no * repeats + k) for k in range(repeats)]


async def run(configs: list[Config], concurrency: list[int], rounds: int, tokens: int, model: Path,
              binary_build: llama_server.Build, logs: Path, min_answers: int = 1) -> Run:
    result = Run(configs, concurrency, rounds, tokens, build=binary_build, min_answers=min_answers)
    threads = thread_budget()
    top = max(concurrency)
    for config in configs:
        if config.kind == "engbot":
            s = engbot_settings(config, top)
            result.reported[config.label] = engbot_reported(s)
            result.commands[config.label] = f"Engine(EngineSettings.from_environ({config.environ()!r}))"
        else:
            args = llama_args(config, threads)
            result.commands[config.label] = "llama-server -m MODEL --host 127.0.0.1 --port P " + " ".join(args)
            # what it resolved (slots, context, flash attention...) is logged at -lv 4 only: ask a probe run
            probe = await asyncio.to_thread(llama_server.start, binary_build.binary, model, [*args, "-lv", "4"],
                                            logs / f"probe-{len(result.reported)}.log")
            await asyncio.to_thread(llama_server.stop, probe)
            result.reported[config.label] = probe.settings()
    for round_no in range(rounds):
        order = configs if round_no % 2 == 0 else configs[::-1]
        for c in concurrency:
            groups = burst_groups(c, round_no, min_answers)
            for config in order:
                load = os.getloadavg()[0]
                result.loads.append(load)
                with busy_neighbour(config.busy):
                    if config.kind == "engbot":
                        answers, wall, pss = await engbot_burst(engbot_settings(config, top), groups, tokens)
                    else:
                        log = logs / f"llama-server-{len(result.bursts)}.log"
                        server = await asyncio.to_thread(llama_server.start, binary_build.binary, model,
                                                         llama_args(config, threads), log)
                        try:
                            answers, wall, pss = await llama_burst(server, groups, tokens)
                        finally:
                            await asyncio.to_thread(llama_server.stop, server)
                burst = Burst(config.label, c, round_no, answers, wall, pss, load)
                result.bursts.append(burst)
                print(f"round {round_no + 1}/{rounds} C={c} {config.label}: {burst.rate:.1f} tok/s, "
                      f"TTFT max {max(a.ttft for a in answers):.2f} s, tokens {burst.tokens}, "
                      f"PSS {burst.pss_mib:.0f} MiB (load {load:.1f})", file=sys.stderr)
    result.loads.append(os.getloadavg()[0])
    return result


# ---------------------------------------------------------------- the report


def ratio_rows(summaries: dict[tuple[str, int], Summary], configs: Sequence[Config],
               concurrency: Sequence[int]) -> list[str]:
    """engbot / llama-server per C: throughput ratio, TTFT p95 of both, and whether the target holds."""
    rows = []
    for e in (c for c in configs if c.kind == "engbot"):
        for peer in (c for c in configs if c.kind == "llama-server" and c.busy == e.busy):
            for c in concurrency:
                mine, theirs = summaries.get((e.label, c)), summaries.get((peer.label, c))
                if mine is None or theirs is None:
                    continue
                ratio = mine.rate / theirs.rate
                met = "yes" if ratio >= 1.0 and mine.ttft_p95 <= theirs.ttft_p95 else "no"
                rows.append(f"| {e.label} | {peer.label} | {c} | **{ratio:.2f}** | {mine.ttft_p95:.2f} | "
                            f"{theirs.ttft_p95:.2f} | {mine.pss_mib / theirs.pss_mib:.2f} | {met} |")
    return rows


def neighbour_rows(summaries: dict[tuple[str, int], Summary], configs: Sequence[Config],
                   concurrency: Sequence[int]) -> list[str]:
    """Per configuration and C: tok/s beside a busy CPU / tok/s on a quiet machine (the fall), and TTFT p95 of both."""
    rows = []
    for busy in (c for c in configs if c.busy):
        quiet = Config(busy.kind, busy.extra)
        for c in concurrency:
            loud, calm = summaries.get((busy.label, c)), summaries.get((quiet.label, c))
            if loud is None or calm is None:
                continue
            rows.append(f"| {quiet.label} | {c} | {calm.rate:.1f} | {loud.rate:.1f} | **{loud.rate / calm.rate:.2f}** "
                        f"| {calm.ttft_p95:.2f} | {loud.ttft_p95:.2f} |")
    return rows


def observations(result: Run, summaries: dict[tuple[str, int], Summary]) -> list[str]:
    """Things in this run's numbers that deserve a look (written out whether or not they occur)."""
    out = []
    short = [s for s in summaries.values() if s.tokens != (result.tokens, result.tokens)]
    if short:
        out += [f"- **Answers not {result.tokens} tokens long**: " + "; ".join(
            f"{s.config} at C={s.concurrency}: {s.tokens[0]}..{s.tokens[1]}" for s in short) + "."]
    else:
        out += [f"- Every answer on both sides was {result.tokens} tokens long."]
    for what, attr in (("Prompt tokens", "prompt_tokens"), ("Prompt tokens taken from the cache", "cached_tokens")):
        by_side: dict[str, set[tuple[int, int]]] = {}
        for s in summaries.values():
            by_side.setdefault(s.config.split(" ")[0], set()).add(getattr(s, attr))
        out.append(f"- {what} per answer (min..max per burst group): " + "; ".join(
            f"{kind}: " + ", ".join(f"{a}..{b}" for a, b in sorted(spans)) for kind, spans in sorted(by_side.items()))
            + ("." if attr == "cached_tokens" else " (the same chat template gives the same counts)."))
    for s in summaries.values():
        if len(s.workers) > 1 and s.concurrency > 1:
            counts = list(s.workers.values())
            if max(counts) > 1.5 * min(counts) + 1:
                out.append(f"- Dispatch imbalance, {s.config} at C={s.concurrency}: answers per replica "
                           + ", ".join(f"#{w}: {n}" for w, n in s.workers.items()) + ".")
        if s.answers >= 4 and s.ttft_max > 2 * s.ttft_p95 and s.ttft_max > 0.5:
            out.append(f"- TTFT outlier, {s.config} at C={s.concurrency}: max {s.ttft_max:.2f} s against p95 "
                       f"{s.ttft_p95:.2f} s.")
    return out


def report(result: Run, argv: Sequence[str], model: Path) -> list[str]:
    summaries = summarize(result.bursts)
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parent).stdout.strip() or "unknown"
    build = result.build
    server_cpu = next((result.reported.get(c.label, {}).get("CPU") for c in result.configs
                       if c.kind == "llama-server"), None) or "?"
    lines = [
        "# Benchmarks: engbot vs llama.cpp's llama-server", "",
        f"Written by `python -m bench.peer_bench {shlex.join(argv)}` on {datetime.date.today()}: "
        f"{platform.machine()}, {os.cpu_count()} CPUs ({cpu_model()}), "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, Python {platform.python_version()}; 1-minute load "
        f"average {min(result.loads):.1f} to {max(result.loads):.1f} during the run. Model {model.name}. "
        "Numbers vary with machine load: compare rows of one run, not runs.", "",
        f"Versions: engbot {commit}; llama-cpp-python {dist_version('llama-cpp-python')} (the engine's library); "
        f"llama-server built from the same version's sdist ({result.server_version}) with "
        f"`{' '.join(build.flags) if build else ''}`, target `llama-server` only. CPU features compiled in: "
        f"llama-cpp-python {result.library_info}; llama-server {server_cpu}.", "",
        f"Method: {result.rounds} round(s); in each round, for each C in {', '.join(map(str, result.concurrency))}, "
        "every configuration is started fresh, warmed up with 4 short answers, then gets C distinct chat questions "
        "at once (same questions for every configuration of that round)"
        + (f", and again with new questions until it has answered {result.min_answers} (tok/s over the bursts' "
           "summed wall time)" if result.min_answers > 1 else "")
        + "; configurations run back to back, in "
        f"alternating order from round to round. Every answer is greedy and {result.tokens} tokens "
        "(end-of-text masked). System prompt \"" + SYSTEM + "\" on both sides. TTFT: submit -> first text, timed "
        "in the benchmark process for both sides (llama-server: streamed `/v1/chat/completions` over HTTP on "
        "127.0.0.1; engbot: the in-process `Engine`, as an adapter uses it). PSS after the burst: llama-server's "
        "process; engbot's engine process (the benchmark process itself) plus its replica processes.", "",
        "## Results", "",
        "| configuration | C | answers | tokens/answer | tok/s (median) | tok/s per round | TTFT p50 s | "
        "TTFT p95 s | TTFT max s | PSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for config in result.configs:
        for c in result.concurrency:
            s = summaries.get((config.label, c))
            if s is None:
                continue
            span = f"{s.tokens[0]}" if s.tokens[0] == s.tokens[1] else f"{s.tokens[0]}..{s.tokens[1]}"
            lines.append(f"| {config.label} | {c} | {s.answers} | {span} | **{s.rate:.1f}** | "
                         f"{', '.join(f'{r:.1f}' for r in s.rates)} | {s.ttft_p50:.2f} | {s.ttft_p95:.2f} | "
                         f"{s.ttft_max:.2f} | {s.pss_mib:.0f} |")
    lines += ["", f"PSS per process after the last burst at C={max(result.concurrency)}:", ""]
    for config in result.configs:
        last = [b for b in result.bursts if b.config == config.label and b.concurrency == max(result.concurrency)]
        if last:
            parts = last[-1].pss_parts
            named = (f"engine process {parts[0]:.0f} + replicas " + " + ".join(f"{p:.0f}" for p in parts[1:])
                     if config.kind == "engbot" else f"{parts[0]:.0f}")
            lines.append(f"- {config.label}: {named} MiB")
    lines += ["", "## engbot / llama-server", "",
              "Target (issue 9): engbot >= 1.0x llama-server's tok/s at every C, and TTFT p95 <= llama-server's.", "",
              "| engbot | llama-server | C | tok/s ratio | engbot TTFT p95 s | llama-server TTFT p95 s | PSS ratio | "
              "target met |",
              "|---|---|---|---|---|---|---|---|",
              *ratio_rows(summaries, result.configs, result.concurrency)]
    falls = neighbour_rows(summaries, result.configs, result.concurrency)
    if falls:
        lines += ["", "## Beside a busy CPU", "",
                  "Each configuration again, with another process spinning on one CPU from before it starts to the "
                  "end of its burst. Target (issue 17): engbot's tok/s falls by no more than llama-server's.", "",
                  "| configuration | C | tok/s, quiet | tok/s, one CPU busy | busy / quiet | TTFT p95 quiet s | "
                  "TTFT p95 busy s |", "|---|---|---|---|---|---|---|", *falls]
    lines += ["", "## Settings", ""]
    for config in result.configs:
        reported = result.reported.get(config.label, {})
        lines.append(f"- **{config.label}**: `{result.commands.get(config.label, '')}`; "
                     + ", ".join(f"{k}={v}" for k, v in reported.items()))
    lines += ["", "engbot's dispatch (answers per replica, all rounds):", ""]
    for s in summaries.values():
        if s.workers:
            lines.append(f"- {s.config}, C={s.concurrency}: " + ", ".join(f"#{w}: {n}" for w, n in s.workers.items()))
    lines += ["", "## Observations (automatic)", "", *observations(result, summaries)]
    return lines


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def library_system_info() -> str:
    """The installed llama-cpp-python's CPU features, asked in a subprocess (this process stays free of it)."""
    code = "import llama_cpp; print(llama_cpp.llama_print_system_info().decode())"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    return proc.stdout.strip().replace("CPU : ", "").rstrip(" |") or "unknown"


def server_version(binary: Path) -> str:
    proc = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30)
    text = (proc.stdout + proc.stderr).strip().splitlines()
    return "; ".join(line.strip() for line in text if line.startswith(("version", "built"))) or "unknown"


def write(out: Path, lines: list[str]) -> None:
    keep = ""
    if out.exists():
        text = out.read_text()
        if NOTES_MARKER in text:
            keep = text[text.index(NOTES_MARKER):]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n" + ("\n" + keep if keep else ""))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m bench.peer_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke test: C=1,4, 1 round")
    parser.add_argument("--concurrency", default="1,4,8,16", help="comma-separated concurrencies (default 1,4,8,16)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=128, help="tokens per answer (default 128)")
    parser.add_argument("--engbot", action="append", metavar="'NAME=VALUE ...'",
                        help="an engbot configuration: settings on top of the defaults ('' = defaults); repeatable")
    parser.add_argument("--llama", action="append", metavar="'ARGS'",
                        help="a llama-server configuration: extra arguments ('' = its defaults); repeatable; "
                             "-t is added unless given (engbot's thread budget)")
    parser.add_argument("--sdist", type=Path, help="a local llama-cpp-python sdist instead of pip download")
    parser.add_argument("--llama-bin", type=Path, help="run this llama-server binary instead of building one "
                        "(e.g. a -DGGML_NATIVE=ON build, to compare builds)")
    parser.add_argument("--min-answers", type=int, default=8,
                        help="answers per round, C and configuration: bursts of C one after the other until there "
                             "are this many (default 8; tok/s is over their summed wall time)")
    parser.add_argument("--neighbour", action="store_true",
                        help="run every configuration a second time beside a program keeping one CPU busy")
    parser.add_argument("--out", default="docs/bench-peers.md")
    args = parser.parse_args(argv)
    concurrency = [1, 4] if args.quick else [int(c) for c in args.concurrency.split(",")]
    rounds = 1 if args.quick else args.rounds
    configs = parse_configs(args.engbot if args.engbot is not None else [""],
                            args.llama if args.llama is not None else ["", LLAMA_NP16], args.neighbour)
    model = EngineSettings.from_environ({}).model_path
    if args.llama_bin is not None:
        build = llama_server.Build(args.llama_bin.resolve(), llama_server.installed_version(), 0.0,
                                   (f"(given binary {args.llama_bin})",))
    else:
        build = llama_server.build(sdist=args.sdist)
    print(f"llama-server: {build.binary} ({f'built in {build.seconds:.0f} s' if build.seconds else 'cached'})",
          file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="engbot-peer-bench-") as tmp:
        result = asyncio.run(run(configs, concurrency, rounds, args.tokens, model, build, Path(tmp),
                                 1 if args.quick else args.min_answers))
    result.server_version = server_version(build.binary)
    result.library_info = library_system_info()
    lines = report(result, argv, model)
    write(Path(args.out), lines)
    print("\n".join(lines))
    print(f"written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
