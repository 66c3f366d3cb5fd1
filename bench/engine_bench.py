"""Engine benchmarks on the default model, side by side in one run. Results are returned as Markdown sections.

(a) direct llama-cpp-python vs the same generation through the engine; (b) aggregate tokens/s under a burst for
1 and 2 one-thread replicas and one two-thread replica; (c) dispatch latency; (d) memory (RSS and PSS of the
process tree); (e) 4 concurrent 128-token answers per layout; (f) answer quality against the library itself. llama.cpp's
own server is measured side by side by ``bench.peer_bench``.
"""

from __future__ import annotations

import asyncio
import gc
import os
import statistics
import sys
import time
from dataclasses import dataclass, replace
from typing import Any

import psutil

from engine.config import EngineSettings
from engine.local import Engine
from engine.types import Done, GenParams, Job, Started, TextPiece

SYSTEM = "You are a helpful assistant."
PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle works.",
    "Describe the water cycle in detail.",
    "Write a poem about autumn leaves.",
    "Explain why the sky is blue.",
    "Describe a day in the life of a baker.",
    "Explain how vaccines work.",
    "Write a letter to a friend about a trip to the mountains.",
]


@dataclass
class Run:
    tokens: int
    seconds: float
    ttft: float

    @property
    def decode_tps(self) -> float:
        return (self.tokens - 1) / max(1e-9, self.seconds - self.ttft)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def settings(workers: int, threads: int | str, slots: int = 1, **kw: object) -> EngineSettings:
    base = EngineSettings.from_environ({"NUM_WORKERS": str(workers), "NUM_THREADS": str(threads),
                                        "PARALLEL_SLOTS": str(slots)})
    return replace(base, **kw)  # type: ignore[arg-type]


# workers, threads, slots; the last is the default on 2 CPUs
LAYOUTS: tuple[tuple[int, int | str, int], ...] = ((1, 1, 1), (2, 1, 1), (1, 2, 1), (2, 1, 2), (2, 1, 8),
                                                  (2, "auto", 8))


QUALITY = [("What is the capital of France?", "paris"), ("What is the capital of Japan?", "tokyo"),
           ("Who wrote Romeo and Juliet?", "shakespeare"), ("What is the largest planet in our solar system?",
                                                             "jupiter"),
           ("How many days are in a week?", "seven|7"), ("What is the chemical symbol for water?", "h2o|h₂o"),
           ("Who painted the Mona Lisa?", "vinci"), ("What is the boiling point of water in Celsius?", "100")]


def right(answer: str, expected: str) -> bool:
    return any(word in answer.lower() for word in expected.split("|"))


def library_answers(questions: list[str], tokens: int, flash_attn: bool) -> list[str]:
    """Greedy chat completions by llama-cpp-python itself, one model, 1 thread."""
    from llama_cpp import Llama

    s = settings(1, 1)
    llm = Llama(model_path=str(s.model_path), n_ctx=s.context_length, n_threads=1, flash_attn=flash_attn,
                verbose=False)
    try:
        out = []
        for q in questions:
            messages: Any = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}]
            reply = llm.create_chat_completion(messages, max_tokens=tokens, temperature=0.0, repeat_penalty=1.0)
            out.append(str(reply["choices"][0]["message"]["content"]))  # type: ignore[index]
        return out
    finally:
        llm.close()


def direct_library(prompt: str, tokens: int, threads: int) -> Run:
    """The same chat completion with llama-cpp-python in this process, streamed."""
    from llama_cpp import Llama

    s = settings(1, threads)
    llm = Llama(model_path=str(s.model_path), n_ctx=s.context_length, n_threads=threads,
                n_threads_batch=threads, flash_attn=s.flash_attn, verbose=False)  # the engine's settings
    try:
        messages: Any = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]
        start = time.perf_counter()
        first = 0.0
        n = 0
        for chunk in llm.create_chat_completion(messages, max_tokens=tokens, temperature=0.0, repeat_penalty=1.0,
                                                stream=True):
            if chunk["choices"][0]["delta"].get("content"):  # type: ignore[index,union-attr]
                n += 1
                first = first or time.perf_counter() - start
        return Run(n, time.perf_counter() - start, first)
    finally:
        llm.close()


async def engine_run(engine: Engine, prompt: str, params: GenParams) -> Run:
    start = time.perf_counter()
    first = 0.0
    async for event in engine.submit_nowait(Job.ask(prompt, params=params)):
        if isinstance(event, TextPiece) and not first:
            first = time.perf_counter() - start
        elif isinstance(event, Done):
            return Run(event.completion_tokens, time.perf_counter() - start, first)
    raise RuntimeError("generation failed")


def replica_memory(engine: Engine) -> list[tuple[float, float]]:
    """(RSS, PSS) in MiB of each live replica process."""
    out = []
    for r in engine.replicas:
        if r.pid and r.alive:
            info = psutil.Process(r.pid).memory_full_info()
            out.append((info.rss / 2**20, info.pss / 2**20))
    return out


async def bench(quick: bool) -> list[str]:
    n_tokens = 64 if quick else 128
    runs = 2 if quick else 3
    greedy = GenParams(max_new_tokens=n_tokens, temperature=0.0, repeat_penalty=1.0)
    out: list[str] = []

    # (a) direct vs engine, 1 thread and 2 threads, greedy, same prompt
    rows = []
    for n_threads in (1, 2):
        direct = [direct_library(PROMPTS[0], n_tokens, n_threads) for _ in range(runs)]
        async with Engine(settings(1, n_threads)) as engine:
            await engine_run(engine, PROMPTS[1], greedy)  # warm-up
            through = [await engine_run(engine, PROMPTS[0], greedy) for _ in range(runs)]
        d = statistics.median(r.decode_tps for r in direct)
        e = statistics.median(r.decode_tps for r in through)
        rows.append(f"| {n_threads} | {d:.1f} | {e:.1f} | {e / d:.2f} | "
                    f"{statistics.median(r.ttft for r in direct) * 1000:.0f} | "
                    f"{statistics.median(r.ttft for r in through) * 1000:.0f} |")
        gc.collect()
    out += ["## (a) Engine vs direct llama-cpp-python call",
            f"Same chat prompt, greedy, {n_tokens} new tokens, median of {runs}; decode speed excludes the first "
            "token. Target: engine >= 0.95 x direct.", "",
            "| threads | direct tok/s | engine tok/s | ratio | direct TTFT ms | engine TTFT ms |",
            "|---|---|---|---|---|---|", *rows, ""]

    # (b) throughput under a burst; (e) 4 concurrent answers; memory of the replicas for (d)
    rows = []
    mem: dict[tuple[int, int | str, int], list[tuple[float, float]]] = {}
    burst = 4 if quick else 8
    concurrent: list[str] = []
    for workers, threads, slots in LAYOUTS:
        async with Engine(settings(workers, threads, slots)) as engine:
            await asyncio.gather(*(engine_run(engine, PROMPTS[i], greedy) for i in range(workers)))  # warm-up
            start = time.perf_counter()
            results = await asyncio.gather(*(engine_run(engine, PROMPTS[i % len(PROMPTS)], greedy)
                                             for i in range(burst)))
            wall = time.perf_counter() - start
            total = sum(r.tokens for r in results)
            rows.append(f"| {workers} | {threads} | {slots} | {burst} | {total} | {wall:.1f} | {total / wall:.1f} |")
            mem[(workers, threads, slots)] = replica_memory(engine)
            start = time.perf_counter()
            four = await asyncio.gather(*(engine_run(engine, PROMPTS[i], greedy) for i in range(4)))
            wall = time.perf_counter() - start
            ttfts = [r.ttft for r in four]
            concurrent.append(
                f"| engbot, {workers} worker(s) x {threads} thread(s) x {slots} slot(s) | "
                f"{sum(r.tokens for r in four) / wall:.0f} | {pct(ttfts, 50):.2f} | {pct(ttfts, 95):.2f} |")
    out += ["## (b) Aggregate throughput under a burst",
            f"{burst} jobs of {n_tokens} tokens submitted at once; tokens/s = all tokens / wall time. Workers are "
            "replica processes, threads are ggml threads per replica, slots are answers one replica decodes "
            "together (PARALLEL_SLOTS).", "",
            "| workers | threads | slots | jobs | tokens | wall s | tok/s |", "|---|---|---|---|---|---|---|",
            *rows, ""]

    # (c) dispatch latency: submit -> Started (includes the pipe hop and prompt tokenization in the replica)
    async with Engine(settings(1, 1)) as engine:
        one = GenParams(max_new_tokens=1, temperature=0.0)
        queue_waits, started = [], []
        for i in range(60 if quick else 200):
            t0 = time.perf_counter()
            async for event in engine.submit_nowait(Job.ask(PROMPTS[i % len(PROMPTS)], params=one)):
                if isinstance(event, Started):
                    started.append(time.perf_counter() - t0)
                    queue_waits.append(event.queue_wait_s)
    out += ["## (c) Dispatch latency (idle replica)",
            "queue -> dispatch: submit until a worker hands the job to its replica; submit -> started: until the "
            "replica reports the prompt built and tokenized. Target p99 < 10 ms.", "",
            "| measure | p50 ms | p99 ms |", "|---|---|---|",
            f"| queue -> dispatch | {pct(queue_waits, 50) * 1000:.3f} | {pct(queue_waits, 99) * 1000:.3f} |",
            f"| submit -> started | {pct(started, 50) * 1000:.2f} | {pct(started, 99) * 1000:.2f} |", ""]

    # (d) memory: replica processes after answering, f16 and q8_0 KV cache; then a LOAD_ON_FLY engine once idle
    mem_rows = []
    for kv in ("f16", "q8_0"):
        totals = []
        for workers in (1, 2):
            if kv == "f16":
                per = mem[(workers, 1, 1)]
            else:
                async with Engine(settings(workers, 1, kv_cache_type=kv)) as engine:
                    await asyncio.gather(*(engine_run(engine, PROMPTS[i], greedy) for i in range(workers)))
                    per = replica_memory(engine)
            totals.append(sum(pss for _, pss in per))
            mem_rows.append(f"| {kv} | {workers} | {' + '.join(f'{pss:.0f}' for _, pss in per)} | {totals[-1]:.0f} | "
                            f"{sum(rss for rss, _ in per):.0f} |")
        added = totals[1] - totals[0]
        mem_rows.append(f"| {kv} | second adds | | **{added:.0f}** = {added / totals[0]:.0%} of the first | |")
    for layout in ((2, 1, 2), (2, 1, 8), (2, "auto", 8)):
        per = mem[layout]
        mem_rows.append(f"| f16, {layout[2]} slots per replica, {layout[1]} thread(s), shared KV cache | {layout[0]} | "
                        f"{' + '.join(f'{pss:.0f}' for _, pss in per)} | {sum(p for _, p in per):.0f} | "
                        f"{sum(r for r, _ in per):.0f} |")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "bench.idle", stdout=asyncio.subprocess.PIPE)
    stdout, _ = await proc.communicate()
    idle_rss, idle_pss, alive = (float(x) for x in stdout.split())
    out += ["## (d) Memory",
            "PSS of the replica processes after answering (the GGUF weights are memory-mapped: replicas share them "
            "and PSS splits shared pages). Targets: the second replica adds under 40% of the first; idle with "
            "LOAD_ON_FLY under 120 MiB.", "",
            "| KV cache | replicas | PSS per replica MiB | PSS total MiB | RSS total MiB |", "|---|---|---|---|---|",
            *mem_rows, "",
            f"Idle with LOAD_ON_FLY (`python -m bench.idle`: a fresh engine process, 2 workers, after one answer "
            f"and KEEP_ALIVE_S=0): {alive:.0f} replica processes left; the engine process holds {idle_rss:.0f} MiB "
            f"RSS / {idle_pss:.0f} MiB PSS, and that is all the bot uses while idle.", ""]

    # (f) answer quality: the engine must not do worse than the library on the same settings
    questions = [q for q, _ in QUALITY]
    quality = GenParams(max_new_tokens=64, temperature=0.0, repeat_penalty=1.0)
    paths: list[tuple[str, list[str]]] = []
    for fa in (True, False):
        lib = library_answers(questions, 64, fa)
        paths.append((f"llama-cpp-python `create_chat_completion`, flash attention {'on' if fa else 'off'}", lib))
        async with Engine(settings(1, 1, flash_attn=fa)) as engine:
            alone = [(await engine.submit_nowait(Job.ask(q, params=quality)).result()) for q in questions]
        texts = [r.text if isinstance(r, Done) else "" for r in alone]
        same = sum(a == b for a, b in zip(lib, texts, strict=True))
        paths.append((f"engbot engine, 1 slot, flash attention {'on' if fa else 'off'} ({same} of {len(QUALITY)} "
                      "answers identical to the library's with the same setting)", texts))
        async with Engine(settings(2, "auto", 8, flash_attn=fa)) as engine:
            batched = await asyncio.gather(*(engine.submit_nowait(Job.ask(q, params=quality)).result()
                                             for q in questions))
        paths.append((f"engbot engine, default layout (2 x auto x 8 slots, all {len(QUALITY)} at once), flash "
                      f"attention {'on' if fa else 'off'}", [r.text if isinstance(r, Done) else "" for r in batched]))
    quality_section = [
        "## (f) Answer quality on the default model",
        f"{len(QUALITY)} factual questions, greedy, 64 tokens, system prompt \"{SYSTEM}\"; an answer counts as right "
        "when it holds the expected word.", "",
        "| path | right |", "|---|---|",
        *(f"| {name} | {sum(right(a, exp) for a, (_, exp) in zip(answers, QUALITY, strict=True))} / {len(QUALITY)} |"
          for name, answers in paths), ""]

    out += ["## (e) 4 concurrent answers of " f"{n_tokens} tokens per layout",
            "The same engine layouts as (b), 4 of the burst's questions again, at once: a batched replica finds "
            "their prompts in its cache (a thread's follow-up gets the same). Against llama.cpp's own server, "
            "measured side by side: [bench-peers.md](bench-peers.md) (`python -m bench.peer_bench`).", "",
            "| layout | aggregate tok/s | TTFT p50 s | TTFT p95 s |", "|---|---|---|---|",
            *concurrent, ""]
    return out + quality_section


def machine() -> str:
    return (f"{os.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
            f"load average {os.getloadavg()[0]:.1f} at start")
