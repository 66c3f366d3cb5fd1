"""The `engbot` command as a user runs it: a real process, the real default model."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from bots.channels.effective import Persona
from bots.channels.store import SqlitePersonas
from testkit.ggml import write_gpt_neox_ggml

ROOT = Path(__file__).resolve().parents[2]


def engbot(*args: str, env: dict[str, str] | None = None, stdin: str | None = None,
           cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    environ = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT), "HOME": str(cwd or ROOT),
               **(env or {})}
    return subprocess.run([sys.executable, "-m", "engbot", *args], capture_output=True, text=True, env=environ,
                          cwd=cwd, input=stdin, timeout=180, check=False)


def test_ask_streams_an_answer(tmp_path: Path) -> None:
    proc = engbot("ask", "What", "is", "the", "capital", "of", "France?", "--temperature", "0", "--max-tokens", "24",
                  cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.strip()) > 5 and proc.stderr == ""


def test_the_quick_start_question_gets_the_same_answer_every_time(tmp_path: Path) -> None:
    # the README's first command, with default settings: no dice roll between a good and a bad answer
    answers = {engbot("ask", "What is the capital of France?", cwd=tmp_path).stdout for _ in range(3)}
    assert len(answers) == 1 and len(answers.pop().strip()) > 5


def test_ask_empty_question_and_run_without_platforms(tmp_path: Path) -> None:
    proc = engbot("ask", " ", cwd=tmp_path)
    assert proc.returncode == 2 and "empty" in proc.stderr
    proc = engbot("run", cwd=tmp_path)
    assert proc.returncode == 2
    assert "SLACK_BOT_TOKEN" in proc.stderr and "DISCORD_BOT_TOKEN" in proc.stderr


def test_chat_keeps_going_until_exit(tmp_path: Path) -> None:
    proc = engbot("chat", "--temperature", "0", "--max-tokens", "16", cwd=tmp_path,
                  stdin="Hello!\n\n/reset\nWhat is 2 + 2?\n/exit\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("> ") >= 3 and "[conversation reset]" in proc.stderr
    assert len([line for line in proc.stdout.splitlines() if line.strip().strip(">").strip()]) >= 2


def test_doctor_on_the_default_model_and_on_a_ggml_file(tmp_path: Path) -> None:
    proc = engbot("doctor", cwd=tmp_path, env={"SLACK_BOT_TOKEN": "xoxb-1-2-verysecretvalue"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for fact in ("gguf", "architecture", "llama", "chat template", "in the file", "avx", "OK"):
        assert fact in proc.stdout, fact
    assert "verysecretvalue" not in proc.stdout and "xoxb-***" in proc.stdout
    model = write_gpt_neox_ggml(tmp_path / "pythia.bin", ftype="q5_0")
    proc = engbot("doctor", cwd=tmp_path, env={"MODEL_PATH": str(model), "CONTEXT_LENGTH": "512",
                                                "MAX_NEW_TOKENS": "32"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ggml" in proc.stdout and "gpt_neox" in proc.stdout and "ctransformers" in proc.stdout


def test_doctor_fails_clearly_on_a_broken_model(tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x01" * 40)
    proc = engbot("doctor", cwd=tmp_path, env={"MODEL_PATH": str(broken)})
    assert proc.returncode == 2
    assert "broken.gguf" in proc.stderr and "truncated" in proc.stderr


def test_run_with_a_rejected_or_unreachable_slack_says_so(tmp_path: Path) -> None:
    env = {"SLACK_BOT_TOKEN": "xoxb-1-2-x", "SLACK_APP_TOKEN": "xapp-1-2-x", "HTTP_PORT": "0",
           "SLACK_API_URL": "http://127.0.0.1:9/api/", "LOG_LEVEL": "ERROR"}  # nothing listens on port 9
    proc = engbot("run", cwd=tmp_path, env=env)
    assert proc.returncode == 1, proc.stderr
    assert "slack could not connect" in proc.stderr and "xoxb-1-2-x" not in proc.stderr
    proc = engbot("run", cwd=tmp_path, env={**env, "SLACK_BOT_TOKEN": "bad-token"})
    assert proc.returncode == 2 and "SLACK_BOT_TOKEN" in proc.stderr


def test_doctor_channel_shows_what_a_channel_gets_and_where_it_comes_from(tmp_path: Path) -> None:
    config = tmp_path / "engbot.toml"
    config.write_text('[defaults]\ntemperature = 0.3\n\n[slack.channel.C0123ABCD]\nmax_new_tokens = 100\n'
                      'allowed_users = ["U0123ABCD"]\n')
    state = tmp_path / "state.db"
    store = SqlitePersonas(state)
    store.open()
    asyncio.run(store.put("slack", "C0123ABCD", Persona("You are a pirate.", "U0ADMIN", 1_700_000_000.0)))
    env = {"ENGBOT_CONFIG": str(config), "STATE_PATH": str(state), "SLACK_BOT_TOKEN": "xoxb-1-2-secret"}
    proc = engbot("doctor", "--channel", "C0123ABCD", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    shown = {line[2:20].strip(): line[20:].strip() for line in proc.stdout.splitlines() if line.startswith("  ")}
    assert shown["system prompt"] == "'You are a pirate.'   (persona set by U0ADMIN)"
    assert shown["temperature"] == f"0.3   ([defaults] in {config}:2)"
    assert shown["max new tokens"] == f"100   ([slack.channel.C0123ABCD] in {config}:5)"
    assert shown["allowed users"].startswith("U0123ABCD") and shown["persona set"].startswith("2023-11-14")
    assert proc.stdout.rstrip().endswith("OK")
    assert "secret" not in proc.stdout

    other = engbot("doctor", "--channel", "C0999", cwd=tmp_path, env=env)  # no persona, no table of its own
    assert other.returncode == 0 and "(SYSTEM_PROMPT)" in other.stdout and "everyone" in other.stdout

    config.write_text('[slack.channel.C0123ABCD]\nmax_new_tokens = 100\ntemperature = "warm"\n')
    bad = engbot("doctor", "--channel", "C0123ABCD", cwd=tmp_path, env=env)
    assert bad.returncode == 2
    assert f"{config}:3: slack.channel.C0123ABCD.temperature: expected a number from 0 to 5" in bad.stderr
