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
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import psutil

from bench import llama_server
from bench.peer_model import LLAMA_NP16, SYSTEM, WARM_UP, Answer, Burst, Config, Run, burst_groups, parse_configs
from bench.peer_report import report, write
from engine.config import EngineSettings
from engine.types import Done, Failed, GenParams, Job, Started, TextPiece, Turn

# ---------------------------------------------------------------- configurations


@contextlib.asynccontextmanager
async def busy_neighbour(busy: bool) -> AsyncIterator[None]:
    """Another program on the machine: a process that spins on one CPU (the scheduler picks which), started before
    the configuration and stopped after its burst."""
    if not busy:
        yield
        return
    spinner = await asyncio.create_subprocess_exec(sys.executable, "-c", "while True: pass")
    try:
        await asyncio.sleep(1.0)  # running, and seen in /proc/stat, before the configuration starts
        yield
    finally:
        spinner.kill()
        await spinner.wait()


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


# ---------------------------------------------------------------- measurements


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


async def timed_groups(groups: list[list[str]],
                       answer: Callable[[str], Awaitable[Answer]]) -> tuple[list[Answer], float]:
    """Each group of prompts submitted at once, the groups one after the other: all the answers, and the groups'
    summed wall time (the warm-up and start-up between them are not counted)."""
    answers: list[Answer] = []
    wall = 0.0
    for prompts in groups:
        began = time.perf_counter()
        answers += await asyncio.gather(*(answer(p) for p in prompts))
        wall += time.perf_counter() - began
    return answers, wall


async def engbot_burst(settings: EngineSettings, groups: list[list[str]],
                       tokens: int) -> tuple[list[Answer], float, tuple[float, ...]]:
    """(answers, wall s, PSS MiB of the engine process and each replica after the burst) of a fresh engine; each
    group of prompts is submitted at once, the groups one after the other (wall: the sum of theirs)."""
    from engine.local import Engine

    async with Engine(settings) as engine:
        await asyncio.gather(*(engbot_answer(engine, p, gen_params(16)) for p in WARM_UP))
        answers, wall = await timed_groups(groups, lambda p: engbot_answer(engine, p, gen_params(tokens)))
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
        answers, wall = await timed_groups(groups, lambda p: llama_answer(session, server.url, p, tokens))
        return answers, wall, pss_mib([server.proc.pid])


# ---------------------------------------------------------------- the run


def engbot_reported(settings: EngineSettings) -> dict[str, str]:
    skip = {"model_path", "system_prompt", "defaults"}
    return {f.name: str(getattr(settings, f.name)) for f in fields(settings) if f.name not in skip}


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
                async with busy_neighbour(config.busy):
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


def library_system_info() -> str:
    """The installed llama-cpp-python's CPU features, asked in a subprocess (this process stays free of it)."""
    code = "import llama_cpp; print(llama_cpp.llama_print_system_info().decode())"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    return proc.stdout.strip().replace("CPU : ", "").rstrip(" |") or "unknown"


def server_version(binary: Path) -> str:
    proc = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30)
    text = (proc.stdout + proc.stderr).strip().splitlines()
    return "; ".join(line.strip() for line in text if line.startswith(("version", "built"))) or "unknown"


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
