"""A long prompt beside streaming answers: do the answers keep moving while a document is read, and how soon does
the document get its first token? engbot and llama.cpp's llama-server (built from the same sources), side by side.

    python -m bench.long_bench [--rounds 3] [--answers 8] [--doc-tokens 3000] [--out docs/bench-long.md]

Scenario, for every configuration, ``--rounds`` times: a fresh server, warmed up (engbot with CONTEXT_LENGTH=4096,
so 8,192 KV cells per replica; llama-server with 8,192 cells shared by its 16 slots); ``--answers`` questions at
once, each a 384-token answer (end-of-text masked); once they all stream, a question with a document of about
``--doc-tokens`` tokens arrives (a 16-token answer). Measured: the longest gap between two text pieces of the
streaming answers while the document is read (from its arrival to its first token), their usual gap (median over
the whole run), and the document's time to first token. Both sides are timed in this process; llama-server
over streamed HTTP on 127.0.0.1, engbot through the in-process ``Engine`` as an adapter uses it.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import llama_server
from bench.peer_bench import thread_budget
from bench.peer_model import SYSTEM
from engine.config import EngineSettings
from engine.types import GenParams, Job, TextPiece, Turn

ANSWER_TOKENS = 384
DOC_ANSWER_TOKENS = 16
SENTENCE = ("The committee reviewed the quarterly figures, noted the rise in shipping costs, and asked the regional "
            "teams for a plan to bring them back within budget before the end of the year. ")


def document(tokens: int) -> str:
    """About ``tokens`` tokens of plain prose (the sentence is about 36 tokens for SmolLM2's tokenizer)."""
    return SENTENCE * max(1, tokens // 36)


@dataclass
class Stream:
    """One streaming answer: when its pieces arrived."""

    arrivals: list[float] = field(default_factory=list)
    ended: float | None = None  # its last piece, once the answer is complete

    def longest_gap(self, start: float, end: float) -> float:
        """The longest time with no piece, within [start, end] (counting from ``start`` to the first piece); an
        answer that ended meanwhile counts up to its last piece (a finished answer is not a stalled one)."""
        if self.ended is not None:
            end = max(start, min(end, self.ended))
        times = [start, *(t for t in self.arrivals if start < t < end), end]
        return max(b - a for a, b in itertools.pairwise(times))

    def end(self) -> None:
        self.ended = self.arrivals[-1] if self.arrivals else None

    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.arrivals, self.arrivals[1:], strict=False)]


@dataclass
class Round:
    config: str
    longest_gap_s: float
    usual_gap_s: float
    doc_ttft_s: float
    doc_prompt_tokens: int
    finished_first: int = 0  # streaming answers complete before the document's first token


def questions(n: int) -> list[str]:
    topics = ("the sea", "mountains", "rivers", "forests", "deserts", "cities", "islands", "the moon", "volcanoes",
              "glaciers", "rain", "bridges", "trains", "gardens", "libraries", "lighthouses")
    return [f"Write a long story about {topics[i % len(topics)]}." for i in range(n)]


LONG_CONTEXT = {"CONTEXT_LENGTH": "4096", "QUEUE_MAX_SIZE": "64"}  # (KV cells: 2 x 4,096 per replica)


def engbot_settings(extra: str) -> EngineSettings:
    """engbot's defaults with a context that holds the document, plus ``extra`` settings (``NAME=VALUE ...``)."""
    pairs = dict(item.split("=", 1) for item in extra.split())
    return EngineSettings.from_environ({**LONG_CONTEXT, **pairs})


async def engbot_round(settings: EngineSettings, config: str, answers: int, doc: str) -> Round:
    from engine.local import Engine

    async with Engine(settings) as engine:
        warm = [engine.submit_nowait(Job.ask("Say hello.", params=GenParams(max_new_tokens=8))) for _ in range(4)]
        await asyncio.gather(*(h.result() for h in warm))
        streams = [Stream() for _ in range(answers)]
        flowing = asyncio.Event()

        async def stream(i: int, question: str) -> None:
            job = Job(turns=(Turn("user", question),), system_prompt=SYSTEM,
                      params=GenParams(max_new_tokens=ANSWER_TOKENS, temperature=0.0, ignore_eos=True))
            async for event in engine.submit_nowait(job):
                if isinstance(event, TextPiece):
                    streams[i].arrivals.append(time.perf_counter())
                    if all(s.arrivals for s in streams):
                        flowing.set()
            streams[i].end()

        tasks = [asyncio.create_task(stream(i, q)) for i, q in enumerate(questions(answers))]
        await flowing.wait()
        await asyncio.sleep(1.0)
        arrived = time.perf_counter()
        doc_job = Job(turns=(Turn("user", f"{doc}\n\nSummarize this document in one sentence."),),
                      system_prompt=SYSTEM, params=GenParams(max_new_tokens=DOC_ANSWER_TOKENS, temperature=0.0))
        first, prompt_tokens = 0.0, 0
        async for event in engine.submit_nowait(doc_job):
            if isinstance(event, TextPiece) and not first:
                first = time.perf_counter()
            prompt_tokens = getattr(event, "prompt_tokens", prompt_tokens)
        await asyncio.gather(*tasks)
    return _round(config, streams, arrived, first, prompt_tokens)


def _round(config: str, streams: list[Stream], arrived: float, first: float, prompt_tokens: int) -> Round:
    longest = max(s.longest_gap(arrived, first) for s in streams)
    usual = statistics.median(g for s in streams for g in s.gaps())
    done = sum(1 for s in streams if s.ended is not None and s.ended < first)
    return Round(config, longest, usual, first - arrived, prompt_tokens, done)


async def llama_stream(session: Any, url: str, messages: list[dict[str, str]], tokens: int, ignore_eos: bool,
                       on_piece: Any) -> int:
    body = {"messages": messages, "max_tokens": tokens, "ignore_eos": ignore_eos, "temperature": 0.0,
            "stream": True, "stream_options": {"include_usage": True}}
    prompt_tokens = 0
    async with session.post(url + "/v1/chat/completions", json=body) as resp:
        if resp.status != 200:
            raise RuntimeError(f"llama-server answered {resp.status}: {(await resp.text())[:300]}")
        async for raw in resp.content:
            line = raw.strip()
            if not line.startswith(b"data:") or line[5:].strip() == b"[DONE]":
                continue
            chunk = json.loads(line[5:].strip())
            if any((c.get("delta") or {}).get("content") for c in chunk.get("choices") or ()):
                on_piece(time.perf_counter())
            prompt_tokens = int((chunk.get("usage") or {}).get("prompt_tokens", prompt_tokens))
    return prompt_tokens


async def llama_round(server: llama_server.Server, config: str, answers: int, doc: str) -> Round:
    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        system = {"role": "system", "content": SYSTEM}
        await asyncio.gather(*(llama_stream(session, server.url, [system, {"role": "user", "content": "Say hello."}],
                                            8, False, lambda t: None) for _ in range(4)))
        streams = [Stream() for _ in range(answers)]
        flowing = asyncio.Event()

        def piece(i: int) -> Any:
            def on(t: float) -> None:
                streams[i].arrivals.append(t)
                if all(s.arrivals for s in streams):
                    flowing.set()
            return on

        async def stream(i: int, question: str) -> None:
            await llama_stream(session, server.url, [system, {"role": "user", "content": question}], ANSWER_TOKENS,
                               True, piece(i))
            streams[i].end()

        tasks = [asyncio.create_task(stream(i, q)) for i, q in enumerate(questions(answers))]
        await flowing.wait()
        await asyncio.sleep(1.0)
        arrived = time.perf_counter()
        firsts: list[float] = []
        prompt_tokens = await llama_stream(
            session, server.url, [system, {"role": "user", "content": f"{doc}\n\nSummarize this document in one "
                                                                       "sentence."}],
            DOC_ANSWER_TOKENS, False, lambda t: firsts.append(t))
        await asyncio.gather(*tasks)
    return _round(config, streams, arrived, firsts[0] if firsts else time.perf_counter(), prompt_tokens)


async def run(rounds: int, answers: int, doc_tokens: int, engbot_configs: list[str],
              llama_configs: list[str]) -> list[Round]:
    model = EngineSettings.from_environ({}).model_path
    build = llama_server.build()
    doc = document(doc_tokens)
    out: list[Round] = []
    configs = [("engbot", c) for c in engbot_configs] + [("llama", c) for c in llama_configs]
    with tempfile.TemporaryDirectory(prefix="engbot-long-bench-") as tmp:
        for r in range(rounds):
            order = configs if r % 2 == 0 else configs[::-1]
            for side, config in order:
                if side == "engbot":
                    name = f"engbot {config}".strip() if config else "engbot (defaults)"
                    result = await engbot_round(engbot_settings(config), name, answers, doc)
                else:
                    args = ["-t", str(thread_budget()), *config.split()]
                    with llama_server.running(build.binary, model, args, Path(tmp) / f"server-{r}.log") as server:
                        result = await llama_round(server, f"llama-server {config}".strip(), answers, doc)
                print(f"round {r + 1}/{rounds} {result.config}: longest gap {result.longest_gap_s:.2f} s, usual "
                      f"{result.usual_gap_s * 1000:.0f} ms, document TTFT {result.doc_ttft_s:.2f} s "
                      f"({result.doc_prompt_tokens} prompt tokens; {result.finished_first} answers complete before it)",
                      file=sys.stderr)
                out.append(result)
    return out


def report(results: list[Round], argv: list[str], answers: int) -> list[str]:
    configs = list(dict.fromkeys(r.config for r in results))
    lines = [
        "# Benchmarks: a long prompt beside streaming answers",
        "",
        f"Written by `python -m bench.long_bench {' '.join(argv)}`".rstrip() + f" on {time.strftime('%Y-%m-%d')}: "
        f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; 1-minute load average "
        f"{os.getloadavg()[0]:.1f} at the end. Method: bench/long_bench.py's docstring ({answers} answers stream, "
        "then the document arrives).",
        "",
        "| configuration | rounds | longest gap while the document is read, s (median; per round) | usual gap, ms "
        "| document TTFT, s (median; per round) | document prompt tokens | answers complete before it, per round |",
        "|---|---|---|---|---|---|---|",
    ]
    for config in configs:
        mine = [r for r in results if r.config == config]
        lines.append(
            f"| {config} | {len(mine)} | **{statistics.median(r.longest_gap_s for r in mine):.2f}**; "
            f"{', '.join(f'{r.longest_gap_s:.2f}' for r in mine)} | "
            f"{statistics.median(r.usual_gap_s for r in mine) * 1000:.0f} | "
            f"**{statistics.median(r.doc_ttft_s for r in mine):.2f}**; "
            f"{', '.join(f'{r.doc_ttft_s:.2f}' for r in mine)} | {mine[0].doc_prompt_tokens} | "
            f"{', '.join(str(r.finished_first) for r in mine)} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m bench.long_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--answers", type=int, default=8)
    parser.add_argument("--doc-tokens", type=int, default=3000)
    parser.add_argument("--engbot", action="append", metavar="'NAME=VALUE ...'",
                        help="an engbot configuration over the defaults (repeatable; default: '' and "
                             "'PREFILL_STEP_MS=0', the fixed 512-token chunks of before)")
    parser.add_argument("--llama", action="append", metavar="'ARGS'",
                        help="a llama-server configuration (repeatable; default: -np 16 -kvu -c 8192)")
    parser.add_argument("--out", default="docs/bench-long.md")
    args = parser.parse_args(argv)
    results = asyncio.run(run(args.rounds, args.answers, args.doc_tokens,
                              args.engbot if args.engbot is not None else ["", "PREFILL_STEP_MS=0"],
                              args.llama if args.llama is not None else ["-np 16 -kvu -c 8192"]))
    lines = report(results, argv, args.answers)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
