"""How fast a Slack mention gets its placeholder and its first streamed words, engine idle and every replica busy.

    python -m bench.slack_latency [--rounds 5] [--workers 1] [--out docs/bench-slack.md]

Everything runs in this process on 127.0.0.1: the fake Slack of the tests (Web API + Socket Mode), the real
adapter (slack-bolt, slack_sdk) and the real engine with the default model. Times are measured at the fake:
from the moment an envelope is written to the socket to the moment the request arrives. Network latency to
Slack itself comes on top (typically 50-150 ms each way).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from bots.messages import Messages
from bots.slack.adapter import SlackAdapter
from bots.slack.settings import SlackSettings
from engine.api import JobHandle
from engine.config import EngineSettings
from engine.local import Engine
from engine.types import GenParams, Job
from testkit.fake_slack import FakeSlack

QUESTIONS = ["What is the capital of France?", "Name three primary colours.", "What is a closure in Python?",
             "Why is the sky blue?", "What is 12 times 12?", "Who wrote Hamlet?", "What is HTTP?", "Define DNS."]
BUSY_TOKENS = 128  # each replica is kept busy with a job of this many tokens when a mention arrives
TARGET_MS = 300.0


@dataclass
class Sample:
    ack_ms: float
    placeholder_ms: float
    first_edit_ms: float
    placeholder_text: str


async def one_mention(slack: FakeSlack, question: str, follow_up_in: str | None = None) -> Sample:
    """A mention, or (``follow_up_in`` a thread ts) a follow-up without a mention in that thread."""
    if follow_up_in is None:
        message = slack.user_says(f"<@{slack.bot_user_id}> {question}")
        envelope = await slack.push(slack.as_mention(message))
    else:
        message = slack.user_says(question, thread_ts=follow_up_in)
        envelope = await slack.push(message)
    thread = follow_up_in or message["ts"]
    pushed = slack.pushed[envelope]
    await slack.wait_for(lambda: [c for c in slack.posts_in(thread) if c.at >= pushed], timeout=30)
    placeholder = next(c for c in slack.posts_in(thread) if c.at >= pushed)
    ts = next(m for m in slack.bot_messages(thread) if m["ts"] > message["ts"])["ts"]

    def first_edit() -> float | None:
        for call in slack.calls_to("chat.update"):
            if call.args.get("ts") == ts and not call.args["text"].startswith(Messages.QUEUED.split("{")[0]):
                return call.at
        return None

    await slack.wait_for(lambda: first_edit() is not None, timeout=120)
    await slack.wait_final(thread, after=message["ts"], timeout=120)
    return Sample(ack_ms=(slack.acks[envelope] - pushed) * 1000, placeholder_ms=(placeholder.at - pushed) * 1000,
                  first_edit_ms=((first_edit() or 0) - pushed) * 1000, placeholder_text=placeholder.args["text"])


async def occupy(engine: Engine, workers: int) -> list[JobHandle]:
    """Give every replica a job; returns once all of them generate."""
    handles = [engine.submit_nowait(Job.ask("Tell me a long story about a lighthouse keeper.",
                                     params=GenParams(max_new_tokens=BUSY_TOKENS, temperature=0.8, seed=i)))
               for i in range(workers)]
    while engine.running < workers or engine.queued:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)  # past the prompt: they are generating
    return handles


async def run(rounds: int, workers: int) -> tuple[list[Sample], list[Sample], list[Sample], EngineSettings]:
    settings = EngineSettings.from_environ({"NUM_WORKERS": str(workers), "NUM_THREADS": "1", "TEMPERATURE": "0",
                                            "MAX_NEW_TOKENS": "48", "QUEUE_MAX_SIZE": "16"})
    async with Engine(settings) as engine, FakeSlack(echo_bot_messages=True) as slack:
        adapter = SlackAdapter(SlackSettings(bot_token=slack.bot_token, app_token=slack.app_token,
                                             api_url=slack.api_url, rate_limit_per_user=0, streaming="edits"),
                               engine)  # (the placeholder and edits path)
        await adapter.start()
        try:
            await one_mention(slack, "Hello!")  # warm-up: bolt's first auth.test, the model's first prompt
            idle = [await one_mention(slack, QUESTIONS[i % len(QUESTIONS)]) for i in range(rounds)]
            threads = [m["ts"] for m in slack.messages["C0001"] if "thread_ts" not in m and "bot_id" not in m]
            follow_ups = [await one_mention(slack, "Tell me more.", follow_up_in=threads[-1 - i])
                          for i in range(rounds)]
            busy = []
            for i in range(rounds):
                jobs = await occupy(engine, workers)
                busy.append(await one_mention(slack, QUESTIONS[(i + 3) % len(QUESTIONS)]))
                for job in jobs:
                    job.cancel()
        finally:
            await adapter.close(timeout_s=30)
    return idle, follow_ups, busy, settings


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.0f} / {max(values):.0f}"


def report(idle: list[Sample], follow_ups: list[Sample], busy: list[Sample], settings: EngineSettings) -> str:
    rows = []
    for name, samples in (("idle", idle), ("idle, follow-up in a thread (history read first)", follow_ups),
                          (f"busy (every replica on a {BUSY_TOKENS}-token job)", busy)):
        rows.append(f"| {name} | {summary([s.ack_ms for s in samples])} | "
                    f"{summary([s.placeholder_ms for s in samples])} | {summary([s.first_edit_ms for s in samples])} |")
    worst = max(s.placeholder_ms for s in idle + follow_ups + busy)
    verdict = "met" if worst < TARGET_MS else "missed"
    return "\n".join([
        "# Slack latency",
        "",
        f"Measured by `python -m bench.slack_latency` on {time.strftime('%Y-%m-%d')}: {platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}; engine with {settings.num_workers} replica(s) "
        f"x {settings.num_threads} thread, default model, greedy, {settings.defaults.max_new_tokens} new tokens; "
        f"{len(idle)} questions per row after one warm-up. The fake Slack, the adapter (slack-bolt Socket Mode) and "
        "the engine share one process on 127.0.0.1, so the network to Slack is not included.",
        "",
        "Milliseconds from the event written to the socket until the fake received: the envelope's ack, the "
        "placeholder (`chat.postMessage`), and the first edit with model text (`chat.update`): median / max.",
        "",
        "| engine | ack | placeholder | first streamed edit |",
        "|---|---|---|---|",
        *rows,
        "",
        f"Target: placeholder under {TARGET_MS:.0f} ms even when every replica is busy: {verdict} "
        f"(worst {worst:.0f} ms). When busy, the placeholder shows the queue position "
        f"(\"{busy[0].placeholder_text}\") and the first streamed edit waits for a replica to finish its job.",
        "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2, help="replicas (default 2, as in .env.example)")
    parser.add_argument("--out", type=Path, default=Path("docs/bench-slack.md"))
    args = parser.parse_args()
    text = report(*asyncio.run(run(args.rounds, args.workers)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
