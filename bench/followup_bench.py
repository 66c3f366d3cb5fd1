"""Follow-ups in long threads behind Redis: does the next question of a thread land on the host that holds its
prompt, and how soon does it get its first token? One host and two hosts, side by side in one run.

    python -m bench.followup_bench [--threads 4] [--doc-tokens 1400] [--out docs/bench-followup.md]

Writes ``--out``; anything after a ``<!-- notes -->`` line of an existing file is kept.

Scenario, for one ``engbot worker``-like host (NUM_THREADS=2), for one with NUM_THREADS=1, for two with NUM_THREADS=1
each (the same 2 CPUs cut in halves: compare with one host on one thread), and for two with the default NUM_THREADS=auto
each (each host's CPU watch leaves the other's share), all in this process behind a redis-server of their own, each with
KV cache room for every thread: ``--threads`` threads start with a question about a document of about ``--doc-tokens``
tokens (the first turn: the whole prompt is read), then get two follow-ups each, one thread at a time (the holder has
room) and then all threads at once. Measured where an adapter sees the events: time to first token of first turns and
follow-ups, the share of the prompt read from cache, and where the follow-ups ran (the hosts'
``engbot_redis_followups_total``: on the holder, or elsewhere).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.engine_bench import machine, pct
from bench.long_bench import document
from bench.peer_report import write
from engine.config import EngineSettings, QueueSettings
from engine.redis import RedisHost, RedisSubmitter
from engine.types import Done, GenParams, Job, Started, TextPiece, Turn
from testkit.redis_server import RedisServer

PARAMS = GenParams(max_new_tokens=16, temperature=0.0, repeat_penalty=1.0)
FOLLOW_UPS = ("Summarize that in one sentence.", "What is the most important number in it?")


@dataclass
class Sample:
    ttft_s: float
    prompt_tokens: int
    cached_tokens: int


@dataclass
class Result:
    first: list[Sample] = field(default_factory=list)
    sequential: list[Sample] = field(default_factory=list)
    concurrent: list[Sample] = field(default_factory=list)
    on_holder: float = 0.0
    elsewhere: float = 0.0


async def ask(submitter: RedisSubmitter, turns: tuple[Turn, ...]) -> tuple[Sample, str]:
    began = time.perf_counter()
    started: Started | None = None
    ttft = 0.0
    async for event in await submitter.submit(Job(turns=turns, params=PARAMS)):
        if isinstance(event, Started):
            started = event
        elif isinstance(event, TextPiece) and not ttft:
            ttft = time.perf_counter() - began
        elif isinstance(event, Done):
            assert started is not None
            return Sample(ttft, started.prompt_tokens, started.cached_tokens), event.text
    raise RuntimeError("a benchmark job failed")


# (hosts, NUM_THREADS of each); one host on one thread is what each of two one-thread hosts has: the difference is
# the cost of the routing
SCENARIOS = ((1, "2"), (1, "1"), (2, "1"), (2, "auto"))


async def scenario(server: RedisServer, prefix: str, hosts: int, host_threads: str, threads: int,
                   doc_tokens: int) -> Result:
    env = {"QUEUE_BACKEND": "redis", "REDIS_URL": server.url, "REDIS_KEY_PREFIX": prefix, "NUM_WORKERS": "1",
           "NUM_THREADS": host_threads, "PARALLEL_SLOTS": str(threads), "REDIS_MAX_PENDING": "1000",
           # room in every host's cache for all the threads (a host holds them all when the other is full)
           "KV_CACHE_TOKENS": str(max(4096, threads * 2 * doc_tokens))}
    running = [RedisHost(QueueSettings.from_environ(env), EngineSettings.from_environ(env)) for _ in range(hosts)]
    result = Result()
    try:
        for host in running:
            await host.start()
        async with RedisSubmitter(QueueSettings.from_environ(env)) as submitter:
            await ask(submitter, (Turn("user", "Hello!"),))  # warm up
            convs: list[tuple[Turn, ...]] = []
            for i in range(threads):
                question = Turn("user", f"Thread {i}. {document(doc_tokens)}\n\nWhat is this text about?")
                sample, text = await ask(submitter, (question,))
                result.first.append(sample)
                convs.append((question, Turn("assistant", text)))
            for i, turns in enumerate(convs):
                sample, text = await ask(submitter, (*turns, Turn("user", FOLLOW_UPS[0])))
                result.sequential.append(sample)
                convs[i] = (*turns, Turn("user", FOLLOW_UPS[0]), Turn("assistant", text))
            answers = await asyncio.gather(*(ask(submitter, (*turns, Turn("user", FOLLOW_UPS[1])))
                                             for turns in convs))
            result.concurrent = [sample for sample, _ in answers]
    finally:
        for host in running:
            registry = host.engine.metrics.registry
            result.on_holder += registry.get_sample_value("engbot_redis_followups_total", {"where": "holder"}) or 0
            result.elsewhere += registry.get_sample_value("engbot_redis_followups_total",
                                                          {"where": "elsewhere"}) or 0
            await host.stop(grace_s=0)
    return result


def row(name: str, samples: list[Sample]) -> str:
    ttft = [s.ttft_s for s in samples]
    cached = sum(s.cached_tokens for s in samples) / max(1, sum(s.prompt_tokens for s in samples))
    prompt = statistics.mean(s.prompt_tokens for s in samples)
    return (f"| {name} | {len(samples)} | {prompt:.0f} | {cached:.0%} | {statistics.median(ttft):.2f} | "
            f"{pct(ttft, 95):.2f} |")


def report(results: dict[tuple[int, str], Result], threads: int, doc_tokens: int) -> list[str]:
    lines = ["# Follow-ups from cache behind Redis", "",
             f"`python -m bench.followup_bench --threads {threads} --doc-tokens {doc_tokens}`, "
             f"{time.strftime('%Y-%m-%d')}; {machine()}; the bundled model. Method: bench/followup_bench.py's "
             "docstring. Times are submit -> first text piece, seen where an adapter sees them.", ""]
    for (hosts, host_threads), result in results.items():
        total = result.on_holder + result.elsewhere
        rate = result.on_holder / total if total else 0.0
        lines += [f"## {hosts} host{'s' if hosts > 1 else ''} (NUM_THREADS={host_threads} each)", "",
                  f"Follow-ups on the host holding their thread: {result.on_holder:.0f} of {total:.0f} "
                  f"({rate:.0%}); elsewhere (the holder was full): {result.elsewhere:.0f}.", "",
                  "| jobs | n | prompt tokens (mean) | read from cache | TTFT p50 s | TTFT p95 s |",
                  "|---|---|---|---|---|---|",
                  row("first turns (cold)", result.first),
                  row("follow-ups, one at a time", result.sequential),
                  row("follow-ups, all threads at once", result.concurrent), ""]
    return lines


async def main_async(threads: int, doc_tokens: int) -> str:
    results: dict[tuple[int, str], Result] = {}
    with tempfile.TemporaryDirectory(prefix="engbot-followup-bench-") as tmp:
        server = RedisServer(Path(tmp) / "redis")
        server.start()
        try:
            for n, (hosts, host_threads) in enumerate(SCENARIOS):
                results[hosts, host_threads] = await scenario(server, f"bench{n}:", hosts, host_threads, threads,
                                                              doc_tokens)
                print(f"{hosts} host(s), NUM_THREADS={host_threads}: done, load {os.getloadavg()[0]:.1f}",
                      file=sys.stderr)
        finally:
            server.stop()
    return "\n".join(report(results, threads, doc_tokens))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--doc-tokens", type=int, default=1400)
    parser.add_argument("--out", type=Path, default=Path("docs/bench-followup.md"))
    args = parser.parse_args()
    text = asyncio.run(main_async(args.threads, args.doc_tokens))
    write(args.out, [text])  # keeps what follows a "<!-- notes -->" line
    print(text)


if __name__ == "__main__":
    main()
