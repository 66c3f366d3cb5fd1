"""The ``engbot`` command: ask, chat, doctor, run, worker, pull, models, bench."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.config import EngineSettings, load_environ
from engine.errors import ConfigError, ModelFileError, ModelServerUnavailable, QueueUnavailable
from engine.local import Engine
from engine.types import Done, Failed, GenParams, Job, Queued, Started, TextPiece, Turn

if TYPE_CHECKING:
    from engine.local.fleet import EngineFleet
    from engine.remote import RemoteSubmitter

EXIT_CONFIG = 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="engbot", description="A Slack and Discord bot answering with a local LLM.")
    parser.add_argument("--version", action="version", version=f"engbot {_version()}")
    parser.add_argument("--env-file", help="settings file read under the environment (default: .env, if there is one)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="ask, chat, doctor: show log lines at LOG_LEVEL too (else warnings and errors only)")
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
    pull = sub.add_parser("pull", help="download a GGUF model from Hugging Face into MODELS_DIR, with progress and "
                          "resume, e.g. engbot pull Qwen/Qwen2.5-0.5B-Instruct-GGUF:q4_k_m")
    pull.add_argument("model", help="owner/repo[:quant or file name], e.g. Qwen/Qwen2.5-0.5B-Instruct-GGUF:q4_k_m")
    pull.add_argument("--revision", help="a branch, tag or commit of the repository (default: main)")
    sub.add_parser("models", help="list the models in MODELS_DIR (names for MODEL_PATH), and the bundled one")
    bench = sub.add_parser("bench", help="run the benchmarks and write docs/benchmarks.md")
    bench.add_argument("--quick", action="store_true", help="fewer and shorter runs")
    bench.add_argument("--out", default="docs/benchmarks.md")

    args = parser.parse_args(argv)
    if args.env_file is not None and not Path(args.env_file).is_file():
        print(f"engbot: --env-file {args.env_file}: no such file", file=sys.stderr)
        return EXIT_CONFIG
    environ = load_environ(args.env_file or ".env")
    commands: dict[str, Callable[[argparse.Namespace, Mapping[str, str]], int]] = {
        "ask": _ask, "chat": _chat, "doctor": _doctor, "run": _run, "worker": _worker, "bench": _bench,
        "pull": _pull, "models": _models,
    }
    try:
        return commands[args.command](args, environ)
    except ConfigError as exc:
        print(f"engbot: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except ModelFileError as exc:
        print(f"engbot: the model could not be loaded: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (QueueUnavailable, ModelServerUnavailable) as exc:
        print(f"engbot: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("engbot")
    except PackageNotFoundError:
        return "(not installed)"


# each option stands for a setting, and is checked as that setting is
FLAGS = {"max_tokens": ("--max-tokens", "MAX_NEW_TOKENS"), "temperature": ("--temperature", "TEMPERATURE"),
         "seed": ("--seed", "SEED"), "system": ("--system", "SYSTEM_PROMPT")}


def _gen_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-tokens", help="override MAX_NEW_TOKENS")
    p.add_argument("--temperature", help="override TEMPERATURE (0 = greedy)")
    p.add_argument("--seed", help="override SEED")
    p.add_argument("--system", help="override SYSTEM_PROMPT")
    p.add_argument("--model", help="with MODELS: the model to ask (one of its names; default DEFAULT_MODEL)")


def _quiet(args: argparse.Namespace, environ: Mapping[str, str]) -> None:
    """Interactive commands print answers, not log lines: warnings and errors only, unless ``--verbose``."""
    from engbot.logs import setup_logging
    from engbot.settings import LogSettings

    logs = LogSettings.from_environ(environ)  # checked as `engbot run` checks it
    level = logs.level if args.verbose else "warning"
    os.environ["LOG_LEVEL"] = level  # the replica processes read it
    setup_logging(level, logs.format)


def _flag_environ(args: argparse.Namespace, environ: Mapping[str, str]) -> dict[str, str]:
    """The settings with the command's flags over them."""
    overrides = {setting: str(value) for option, (_, setting) in FLAGS.items()
                 if (value := getattr(args, option, None)) is not None}
    return {**environ, **overrides}


def _several(environ: Mapping[str, str]) -> bool:
    """MODELS is set: each model samples with its own settings (the flags included)."""
    return bool((environ.get("MODELS") or "").strip())


def _cli_settings(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[EngineSettings, GenParams]:
    overrides = _flag_environ(args, {})
    try:
        settings = EngineSettings.from_environ({**environ, **overrides})
    except ConfigError as exc:
        flag = next((f for f, setting in FLAGS.values() if setting == exc.name and setting in overrides), None)
        if flag is None:
            raise
        raise ConfigError(flag, exc.value, exc.allowed) from None
    # one conversation at a time: one replica is enough, and starts fastest
    return replace(settings, num_workers=1), settings.defaults


@asynccontextmanager
async def _engine(settings: EngineSettings, environ: Mapping[str, str]
                  ) -> AsyncIterator[Engine | RemoteSubmitter | EngineFleet]:
    """An engine for an interactive command: whatever ends the command (Ctrl-C too) stops it at once, without
    the SHUTDOWN_GRACE_S a bot gives its users' answers."""
    engine = _answerer(settings, environ)
    try:
        await engine.start()
        yield engine
    finally:
        await engine.stop(grace_s=0)


def _answerer(settings: EngineSettings, environ: Mapping[str, str]) -> Engine | RemoteSubmitter | EngineFleet:
    """The local engine, several models (MODELS), or the model server (MODEL_BACKEND=openai)."""
    from engine.models.fleet import FleetSettings, ModelSpec

    if settings.model_backend == "openai":
        from engine.remote import RemoteSettings, RemoteSubmitter

        return RemoteSubmitter(settings, RemoteSettings.from_environ(environ))
    fleet = FleetSettings.from_environ(environ)
    if fleet is not None:
        from engine.local.fleet import EngineFleet

        # one conversation at a time: one replica per model
        models = tuple(ModelSpec(m.name, replace(m.settings, num_workers=1)) for m in fleet.models)
        return EngineFleet(replace(fleet, models=models))
    return Engine(settings)


async def _stream(engine: Engine | RemoteSubmitter | EngineFleet, job: Job, out: Any = sys.stdout
                  ) -> Done | Failed:
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
            out.flush()
            if isinstance(event, Failed):
                print(f"engbot: {event.reason}", file=sys.stderr)
            elif event.finish_reason == "length":
                print(f"[cut at {event.completion_tokens} tokens: --max-tokens or MAX_NEW_TOKENS]", file=sys.stderr)
            return event
    raise AssertionError("unreachable")


def _ask(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    _quiet(args, environ)
    settings, params = _cli_settings(args, environ)
    question = " ".join(args.question).strip()
    if not question:
        print("engbot: the question is empty", file=sys.stderr)
        return EXIT_CONFIG

    async def go() -> int:
        async with _engine(settings, _flag_environ(args, environ)) as engine:
            job = Job.ask(question, params=None if _several(environ) else params, model=args.model,
                          system_prompt=args.system)
            result = await _stream(engine, job)
            return 0 if isinstance(result, Done) else 1

    return asyncio.run(go())


def _chat(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    _quiet(args, environ)
    settings, params = _cli_settings(args, environ)

    async def go() -> int:
        history: list[Turn] = []
        async with _engine(settings, _flag_environ(args, environ)) as engine:
            print("engbot chat: type a message; /reset forgets the conversation, /exit or Ctrl-D quits.",
                  file=sys.stderr)
            while True:
                try:
                    line = await _input("> ")
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
                result = await _stream(engine, Job(turns=tuple(history), params=None if _several(environ) else params,
                                                   model=args.model, system_prompt=args.system))
                if isinstance(result, Done):
                    history.append(Turn("assistant", result.text))
                else:
                    history.pop()

    return asyncio.run(go())


async def _input(prompt: str) -> str:
    """``input(prompt)`` in a daemon thread: Ctrl-C ends the command at once, where a thread of the default executor
    would keep the process until the line was typed."""
    loop = asyncio.get_running_loop()
    line: asyncio.Future[str] = loop.create_future()

    def settle(result: str, error: BaseException | None) -> None:
        if line.done():
            return
        if error is not None:
            line.set_exception(error)
        else:
            line.set_result(result)

    def read() -> None:
        try:
            result, error = input(prompt), None
        except BaseException as exc:  # EOFError, mostly
            result, error = "", exc
        with contextlib.suppress(RuntimeError):  # the command ended meanwhile: its loop is closed
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=read, name="engbot-input", daemon=True).start()
    return await line


def _doctor(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from engbot.doctor import doctor

    _quiet(args, environ)
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


def _pull(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from engbot.models import pull_command

    return pull_command(args, environ)


def _models(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from engbot.models import models_command

    return models_command(args, environ)


def _bench(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """``python -m bench`` in a process of its own: the benchmarks are a development tool, not part of the app."""
    if importlib.util.find_spec("psutil") is None:
        print("engbot: the benchmarks need the bench extra: pip install 'engbot[bench]' (or '.[bench]')",
              file=sys.stderr)
        return EXIT_CONFIG
    command = [sys.executable, "-m", "bench", "--out", args.out, *(["--quick"] if args.quick else [])]
    return subprocess.call(command, env={**os.environ, **environ})

