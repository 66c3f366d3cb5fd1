"""The ``engbot`` command: ask, chat, doctor, run, worker, bench."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from engine.config import EngineSettings, load_environ
from engine.errors import ConfigError, ModelFileError, QueueUnavailable
from engine.local import Engine
from engine.types import Done, Failed, GenParams, Job, Queued, Started, TextPiece, Turn

EXIT_CONFIG = 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="engbot", description="A Slack and Discord bot answering with a local LLM.")
    parser.add_argument("--env-file", default=".env", help="settings file read under the environment (default .env)")
    sub = parser.add_subparsers(dest="command", required=True)

    ask = sub.add_parser("ask", help="answer one question on the configured model, streamed to the terminal")
    ask.add_argument("question", nargs="+")
    _gen_options(ask)
    chat = sub.add_parser("chat", help="an interactive chat in the terminal (/reset, /exit)")
    _gen_options(chat)
    doctor = sub.add_parser("doctor", help="check the settings, the CPU and the model, then generate a few tokens")
    doctor.add_argument("--channel", help="show the settings of this channel instead (a Slack or Discord ID)")
    doctor.add_argument("--guild", help="with --channel: its Slack team or Discord server ID")
    doctor.add_argument("--dm", action="store_true", help="with --channel: it is a direct message")
    sub.add_parser("run", help="run the bot: the engine, every configured adapter and the HTTP endpoints")
    sub.add_parser("worker", help="run an engine host that takes jobs from Redis (QUEUE_BACKEND=redis)")
    bench = sub.add_parser("bench", help="run the benchmarks and write docs/benchmarks.md")
    bench.add_argument("--quick", action="store_true", help="fewer and shorter runs")
    bench.add_argument("--out", default="docs/benchmarks.md")

    args = parser.parse_args(argv)
    environ = load_environ(args.env_file)
    commands: dict[str, Callable[[argparse.Namespace, Mapping[str, str]], int]] = {
        "ask": _ask, "chat": _chat, "doctor": _doctor, "run": _run, "worker": _worker, "bench": _bench,
    }
    try:
        return commands[args.command](args, environ)
    except ConfigError as exc:
        print(f"engbot: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except ModelFileError as exc:
        print(f"engbot: the model could not be loaded: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except QueueUnavailable as exc:
        print(f"engbot: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130


def _gen_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-tokens", type=int, help="override MAX_NEW_TOKENS")
    p.add_argument("--temperature", type=float, help="override TEMPERATURE (0 = greedy)")
    p.add_argument("--seed", type=int, help="override SEED")
    p.add_argument("--system", help="override SYSTEM_PROMPT")


def _quiet(environ: Mapping[str, str]) -> None:
    """Interactive commands print answers, not log lines, unless LOG_LEVEL asks for them."""
    from engbot.logs import setup_logging

    level = environ.get("LOG_LEVEL", "WARNING")
    os.environ.setdefault("LOG_LEVEL", level)  # the replica processes read it
    setup_logging(level, environ.get("LOG_FORMAT", "text"))


def _cli_settings(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[EngineSettings, GenParams]:
    # one conversation at a time: one replica is enough, and starts fastest
    settings = replace(EngineSettings.from_environ(environ), num_workers=1)
    if args.system is not None:
        settings = replace(settings, system_prompt=args.system)
    params = settings.defaults
    overrides = {k: v for k, v in (("max_new_tokens", args.max_tokens), ("temperature", args.temperature),
                                   ("seed", args.seed)) if v is not None}
    return settings, replace(params, **overrides)  # type: ignore[arg-type]


async def _stream(engine: Engine, job: Job, out: Any = sys.stdout) -> Done | Failed:
    async for event in await engine.submit(job):
        if isinstance(event, TextPiece):
            out.write(event.text)
            out.flush()
        elif isinstance(event, Queued):
            print(f"[queued: position {event.position}]", file=sys.stderr)
        elif isinstance(event, Started) and event.dropped_turns:
            print(f"[{event.dropped_turns} oldest messages left out to fit the context]", file=sys.stderr)
        elif isinstance(event, Done | Failed):
            out.write("\n")
            if isinstance(event, Failed):
                print(f"engbot: {event.reason}", file=sys.stderr)
            return event
    raise AssertionError("unreachable")


def _ask(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    _quiet(environ)
    settings, params = _cli_settings(args, environ)
    question = " ".join(args.question).strip()
    if not question:
        print("engbot: the question is empty", file=sys.stderr)
        return EXIT_CONFIG

    async def go() -> int:
        async with Engine(settings) as engine:
            result = await _stream(engine, Job.ask(question, params=params))
            return 0 if isinstance(result, Done) else 1

    return asyncio.run(go())


def _chat(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    _quiet(environ)
    settings, params = _cli_settings(args, environ)

    async def go() -> int:
        history: list[Turn] = []
        async with Engine(settings) as engine:
            print("engbot chat: type a message; /reset forgets the conversation, /exit or Ctrl-D quits.",
                  file=sys.stderr)
            while True:
                try:
                    line = await asyncio.to_thread(input, "> ")
                except EOFError:
                    print(file=sys.stderr)
                    return 0
                line = line.strip()
                if line in ("/exit", "/quit"):
                    return 0
                if line == "/reset":
                    history.clear()
                    print("[conversation reset]", file=sys.stderr)
                    continue
                if not line:
                    continue
                history.append(Turn("user", line))
                result = await _stream(engine, Job(turns=tuple(history), params=params))
                if isinstance(result, Done):
                    history.append(Turn("assistant", result.text))
                else:
                    history.pop()

    return asyncio.run(go())


def _doctor(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from engbot.doctor import doctor

    _quiet(environ)
    if args.channel:
        from engbot.doctor_channel import channel_report

        return channel_report(environ, args.channel, guild=args.guild, dm=args.dm)
    return doctor(environ)


def _run(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from engbot.run import run

    return run(environ)


def _worker(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from engbot.host import run_worker

    return run_worker(environ)


def _bench(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """``python -m bench`` in a process of its own: the benchmarks are a development tool, not part of the app."""
    if importlib.util.find_spec("psutil") is None:
        print("engbot: the benchmarks need the bench extra: pip install 'engbot[bench]' (or '.[bench]')",
              file=sys.stderr)
        return EXIT_CONFIG
    command = [sys.executable, "-m", "bench", "--out", args.out, *(["--quick"] if args.quick else [])]
    return subprocess.call(command, env={**os.environ, **environ})

