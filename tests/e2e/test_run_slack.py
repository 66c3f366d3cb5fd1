"""`engbot run` as an operator starts it: a real process, the real model, Slack faked on 127.0.0.1.

A mention is answered in its thread, /healthz /readyz /metrics answer, and SIGTERM stops the process cleanly
(exit 0) with the answer that was still generating ended by a "restarting" reply.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import aiohttp

from bots.messages import Messages
from testkit.fake_slack import FakeSlack

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, await resp.text()


async def test_engbot_run_answers_a_mention_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    async with FakeSlack() as slack:
        port = free_port()
        env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "HOME": str(tmp_path),
               "SLACK_BOT_TOKEN": slack.bot_token, "SLACK_APP_TOKEN": slack.app_token, "SLACK_API_URL": slack.api_url,
               "HTTP_HOST": "127.0.0.1", "HTTP_PORT": str(port), "NUM_WORKERS": "1", "TEMPERATURE": "0",
               "MAX_NEW_TOKENS": "600", "SHUTDOWN_GRACE_S": "1", "LOG_LEVEL": "INFO"}
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "engbot", "run", env=env, cwd=tmp_path,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            await slack.wait_for(lambda: slack.connections > 0, timeout=60)
            base = f"http://127.0.0.1:{port}"
            for _ in range(100):
                status, body = await get(f"{base}/readyz")
                if status == 200:
                    break
                await asyncio.sleep(0.1)
            assert status == 200, body
            assert (await get(f"{base}/healthz"))[0] == 200

            message = slack.user_says("<@UBOT> What is the capital of France?")
            await slack.push(slack.as_mention(message))
            answer = await slack.wait_final(message["ts"])
            assert answer.strip() and not answer.startswith("⚠️")

            status, metrics = await get(f"{base}/metrics")
            assert 'engbot_requests_total{outcome="ok",platform="slack"} 1.0' in metrics

            long = slack.user_says("<@UBOT> Write a very long story about a dragon and a knight.")
            await slack.push(slack.as_mention(long))
            await slack.wait_for(lambda: any(m["text"].endswith(Messages.CURSOR) or slack.ai.streaming(m["ts"])
                                             for m in slack.bot_messages(long["ts"])), timeout=30)  # (either way)
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(proc.wait(), 30)
            stderr = (await proc.stderr.read()).decode()  # type: ignore[union-attr]
            assert code == 0, stderr
            final = await slack.wait_final(long["ts"], timeout=5)
            assert final.endswith(Messages.SHUTDOWN)  # the partial answer, then the note: one final reply
            assert slack.bot_token not in stderr and slack.app_token not in stderr
            assert "stopped" in stderr
            assert "platform=slack outcome=ok" in stderr  # the per-answer line survives slack-bolt's logger set-up
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def test_a_slack_unreachable_at_boot_is_tried_again_until_it_answers(tmp_path: Path) -> None:
    # a network blip at boot: engbot run gave up at once (exit 1); now it tries again while /readyz says why
    async with FakeSlack() as slack:
        slack.fail("auth.test", status=503, error="service_unavailable", retry_after=0.1, times=5)
        port = free_port()
        env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "HOME": str(tmp_path),
               "SLACK_BOT_TOKEN": slack.bot_token, "SLACK_APP_TOKEN": slack.app_token, "SLACK_API_URL": slack.api_url,
               "HTTP_PORT": str(port), "NUM_WORKERS": "1", "MAX_NEW_TOKENS": "16", "SHUTDOWN_GRACE_S": "1",
               "LOG_LEVEL": "INFO"}
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "engbot", "run", env=env, cwd=tmp_path,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            base = f"http://127.0.0.1:{port}"
            why = ""
            for _ in range(600):
                try:
                    status, body = await get(f"{base}/readyz")
                except aiohttp.ClientError:
                    status, body = 0, ""
                if status == 503 and "could not connect" in body:
                    why = body
                if status == 200:
                    break
                await asyncio.sleep(0.05)
            assert status == 200, body
            assert "service_unavailable" in why and '"slack": false' in why  # (while it was trying again)
            message = slack.user_says("<@UBOT> Hi!")
            await slack.push(slack.as_mention(message))
            assert (await slack.wait_final(message["ts"])).strip()
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(proc.wait(), 30)
            stderr = (await proc.stderr.read()).decode()  # type: ignore[union-attr]
            assert code == 0, stderr
            assert "slack could not connect" in stderr and "slack adapter connected" in stderr
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
