"""What the buttons under an answer cost and give: how soon a Stop frees a slot for the next question, and how many
``chat.update`` calls a Slack workspace gets under load.

    python -m bench.controls_bench [--rounds 8] [--seconds 60] [--out docs/bench-controls.md]

1. **Stop -> next job**: every slot of the engine is busy with a long answer and one more question waits; the
   benchmark cancels one answer by its job id (what a Stop press does) and times until the waiting question's
   ``Started``. The real engine with the default model: one replica with one slot, and the default layout (2
   replicas x 8 slots).
2. **Edits per minute per workspace**: 16 questions at once, again and again for ``--seconds``, through the real
   Slack adapter (slack-bolt, Socket Mode) against the fake Slack, which enforces ``chat.update``'s tier (50 a
   minute); the answers stream at about the default model's speed (20 tokens a second each, scripted). Counted at
   the fake: ``chat.update`` calls per minute, 429s, and how long each answer's last edit waited.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import time
from pathlib import Path

from bots.slack.adapter import SlackAdapter
from bots.slack.settings import SlackSettings
from engine.config import EngineSettings
from engine.local import Engine
from engine.types import GenParams, Job, Started, TextPiece
from testkit.fake_slack import FakeSlack
from testkit.scripted import ScriptedEngine, answer

LONG = GenParams(max_new_tokens=1500, temperature=0.8, seed=1, ignore_eos=True)
SHORT = GenParams(max_new_tokens=8, temperature=0.0)


async def stop_to_next(settings: EngineSettings, rounds: int) -> list[float]:
    """Seconds from cancel(job_id) to the waiting job's Started, ``rounds`` times."""
    took: list[float] = []
    async with Engine(settings) as engine:
        for i in range(rounds):
            running = [engine.submit_nowait(Job.ask(f"Tell me a long story, number {i}.{n}.", params=LONG))
                       for n in range(engine.capacity)]
            for handle in running:
                async for event in handle:
                    if isinstance(event, TextPiece):
                        break
            waiting = engine.submit_nowait(Job.ask("What is 2 + 2?", params=SHORT))
            assert waiting.position == 1
            began = time.perf_counter()
            engine.cancel(running[0].job.id)
            async for event in waiting:
                if isinstance(event, Started):
                    took.append(time.perf_counter() - began)
                    break
            for handle in running:
                engine.cancel(handle.job.id)
            await waiting.result()
            for handle in running:
                await handle.result()
    return took


async def edits_per_minute(seconds: float) -> dict[str, float]:
    tier = (50, 60.0)
    text = "Rain falls on the roof, and the roof sings to the street below. " * 6  # ~390 characters
    async with FakeSlack(rate_limits={"chat.update": tier}) as slack:
        engine = ScriptedEngine(answer(text, size=4), delay_s=0.05)  # 4 characters (about a token) 20 times a second
        adapter = SlackAdapter(SlackSettings(bot_token=slack.bot_token, app_token=slack.app_token,
                                             api_url=slack.api_url, rate_limit_per_user=0), engine)
        await adapter.start()
        began = time.monotonic()
        answered = 0
        try:
            while time.monotonic() - began < seconds:
                questions = [slack.user_says(f"<@UBOT> A poem about rain, please ({answered + i}).",
                                             user=f"U{i:04}") for i in range(16)]
                for message in questions:
                    await slack.push(slack.as_mention(message))
                for message in questions:
                    await slack.wait_final(message["ts"], timeout=600)
                answered += len(questions)
            elapsed = time.monotonic() - began
        finally:
            await adapter.close(timeout_s=10)
    updates = slack.calls_to("chat.update")
    per_minute = [sum(1 for c in updates if start <= c.at - updates[0].at < start + 60)
                  for start in range(0, max(1, int(elapsed) - 59), 10)] if updates else [0]
    return {"answers": answered, "seconds": elapsed, "updates": len(updates), "limited": len(slack.limited),
            "busiest_minute": max(per_minute), "mean_per_minute": len(updates) / elapsed * 60}


def report(single: list[float], batched: list[float], edits: dict[str, float], layout: str) -> list[str]:
    def row(name: str, took: list[float]) -> str:
        ms = sorted(t * 1000 for t in took)
        return (f"| {name} | {len(ms)} | {statistics.median(ms):.0f} | {ms[-1]:.0f} |")

    return [
        "# Benchmarks: Stop, and Slack's edit budget",
        "",
        f"Written by `python -m bench.controls_bench` on {time.strftime('%Y-%m-%d')}: {platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}; 1-minute load average "
        f"{os.getloadavg()[0]:.1f} at the end. Method: bench/controls_bench.py's docstring.",
        "",
        "## Stop -> the next question starts",
        "",
        "Every slot busy with a long answer, one question waiting; one answer is cancelled by its job id.",
        "",
        "| layout | presses | median ms | max ms |",
        "|---|---|---|---|",
        row("1 replica x 1 slot", single),
        row(layout, batched),
        "",
        "## chat.update per minute, 16 answers at once, over and over",
        "",
        f"{edits['answers']:.0f} answers in {edits['seconds']:.0f} s; {edits['updates']:.0f} `chat.update` calls: "
        f"{edits['mean_per_minute']:.0f} a minute on average, {edits['busiest_minute']:.0f} in the busiest "
        f"minute (the tier allows 50); {edits['limited']:.0f} answered 429.",
        "",
    ]


async def main_async(rounds: int, seconds: float) -> list[str]:
    single_settings = EngineSettings.from_environ({"NUM_WORKERS": "1", "PARALLEL_SLOTS": "1", "QUEUE_MAX_SIZE": "4"})
    defaults = EngineSettings.from_environ({"QUEUE_MAX_SIZE": "32"})
    single = await stop_to_next(single_settings, rounds)
    batched = await stop_to_next(defaults, rounds)
    edits = await edits_per_minute(seconds)
    return report(single, batched, edits, defaults.layout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.controls_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--out", default="docs/bench-controls.md")
    args = parser.parse_args(argv)
    lines = asyncio.run(main_async(args.rounds, args.seconds))
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
