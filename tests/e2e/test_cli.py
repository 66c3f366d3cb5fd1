"""The `engbot` command as a user runs it: a real process, the real default model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


def test_ask_picks_one_of_several_models(tmp_path: Path) -> None:
    pythia = write_gpt_neox_ggml(tmp_path / "pythia.bin", ftype="q5_0")  # a second, different model
    env = {"MODELS": f"fast=smollm2-135m-instruct.q4_1,code={pythia}", "MODELS_CODE_CONTEXT_LENGTH": "512",
           "MAX_LOADED_MODELS": "1"}
    proc = engbot("ask", "Hi", cwd=tmp_path, env=env)  # the default MAX_NEW_TOKENS does not fit that context
    assert proc.returncode == 2 and "for the model 'code' of MODELS" in proc.stderr, proc.stderr
    assert "MODELS_CODE_MAX_NEW_TOKENS sets it" in proc.stderr
    env["MODELS_CODE_MAX_NEW_TOKENS"] = "64"
    plain = engbot("ask", "What is the capital of France?", "--max-tokens", "12", cwd=tmp_path)
    fast = engbot("ask", "What is the capital of France?", "--max-tokens", "12", "--model", "fast", cwd=tmp_path,
                  env=env)
    code = engbot("ask", "What is the capital of France?", "--max-tokens", "12", "--model", "code", cwd=tmp_path,
                  env=env)
    assert plain.returncode == fast.returncode == code.returncode == 0, fast.stderr + code.stderr
    assert fast.stdout == plain.stdout  # the bundled model, by its short name: the same greedy answer
    assert code.stdout.strip() and code.stdout != fast.stdout  # the other model answered
    bad = engbot("ask", "Hi", cwd=tmp_path, env={**env, "DEFAULT_MODEL": "slow"})
    assert bad.returncode == 2 and "DEFAULT_MODEL='slow' is not valid" in bad.stderr
