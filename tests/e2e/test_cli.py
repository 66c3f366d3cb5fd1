"""The `engbot` command as a user runs it: a real process, the real default model."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

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


def test_ask_an_empty_question(tmp_path: Path) -> None:
    proc = engbot("ask", " ", cwd=tmp_path)
    assert proc.returncode == 2 and "empty" in proc.stderr


def test_chat_keeps_going_until_exit(tmp_path: Path) -> None:
    proc = engbot("chat", "--temperature", "0", "--max-tokens", "16", cwd=tmp_path,
                  stdin="Hello!\n\n/reset\nWhat is 2 + 2?\n/exit\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("> ") >= 3 and "[conversation reset]" in proc.stderr
    assert len([line for line in proc.stdout.splitlines() if line.strip().strip(">").strip()]) >= 2


def test_doctor_on_the_default_model_and_on_a_ggml_file(tmp_path: Path) -> None:
    # (Slack needs both tokens: a bot token alone is refused, by doctor as by run)
    proc = engbot("doctor", cwd=tmp_path, env={"SLACK_BOT_TOKEN": "xoxb-1-2-verysecretvalue",
                                               "SLACK_APP_TOKEN": "xapp-1-A1-2-verysecretvalue"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for fact in ("gguf", "architecture", "llama", "chat template", "in the file", "avx", "OK"):
        assert fact in proc.stdout, fact
    assert "verysecretvalue" not in proc.stdout and "xoxb-***" in proc.stdout and "xapp-***" in proc.stdout
    assert re.search(r"slack +configured", proc.stdout) and "status page only" in proc.stdout
    state = tmp_path / "engbot-state.db"
    assert f"settings file none; personas in SQLite file {state} (STATE_PATH)" in proc.stdout
    assert not state.exists()  # checked, not made: doctor leaves nothing behind
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


def test_run_with_a_rejected_slack_token_says_so(tmp_path: Path) -> None:
    env = {"SLACK_BOT_TOKEN": "bad-token", "SLACK_APP_TOKEN": "xapp-1-2-x", "HTTP_PORT": "0"}
    proc = engbot("run", cwd=tmp_path, env=env)
    assert proc.returncode == 2 and "SLACK_BOT_TOKEN" in proc.stderr and "bad-token" not in proc.stderr


# ---- a newcomer's first hour (issue 18): each defect found, one test ----

LONG_QUESTION = "Write a very long story about a dragon and a knight, with many chapters."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def no_traceback(proc: subprocess.CompletedProcess[str]) -> bool:
    return "Traceback" not in proc.stdout + proc.stderr


def test_version(tmp_path: Path) -> None:
    proc = engbot("--version", cwd=tmp_path)
    assert proc.returncode == 0 and re.fullmatch(r"engbot \d+\.\d+\.\d+\S*\n", proc.stdout), proc.stdout


def test_doctor_after_copying_env_example_shows_every_setting_and_masks_only_secrets(tmp_path: Path) -> None:
    shutil.copy(ROOT / ".env.example", tmp_path / ".env")
    proc = engbot("doctor", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    shown = dict(re.findall(r"^  ([A-Z][A-Z0-9_]+) +(.*)$", proc.stdout, re.M))
    # not secrets, although their names hold TOKEN or KEY
    assert shown["MAX_NEW_TOKENS"] == "512" and shown["REDIS_KEY_PREFIX"] == "engbot:"
    assert shown["KV_CACHE_TOKENS"] == "0"
    for name in ("PARALLEL_SLOTS", "KV_CACHE_TYPE", "FLASH_ATTN", "JOB_DEADLINE_S", "PLAYGROUND_TOKEN"):
        assert name in shown, name  # (doctor listed settings by prefixes and missed these)
    assert "playground" in proc.stdout and "http://127.0.0.1:8080/" in proc.stdout and "OK" in proc.stdout
    assert proc.stderr == ""  # .env.example's LOG_LEVEL=INFO is `engbot run`'s: no log lines here


BAD_SETTINGS = {
    "http port out of range": {"HTTP_PORT": "99999"},
    "log format": {"LOG_FORMAT": "xml"},
    "log level": {"LOG_LEVEL": "verbose"},
    "slack bot token": {"SLACK_BOT_TOKEN": "garbage", "SLACK_APP_TOKEN": "xapp-1-A1-2-x"},
    "slack bot token without app token": {"SLACK_BOT_TOKEN": "xoxb-1-2-x"},
    "redis url": {"QUEUE_BACKEND": "redis", "REDIS_URL": "http://x"},
}
NAMED = {"http port out of range": "HTTP_PORT", "log format": "LOG_FORMAT", "log level": "LOG_LEVEL",
         "slack bot token": "SLACK_BOT_TOKEN", "slack bot token without app token": "SLACK_APP_TOKEN",
         "redis url": "REDIS_URL"}


@pytest.mark.parametrize("case", list(BAD_SETTINGS))
def test_doctor_fails_for_exactly_what_run_refuses(tmp_path: Path, case: str) -> None:
    env = {**BAD_SETTINGS[case], "HTTP_HOST": "127.0.0.1"}
    for command in ("doctor", "run"):
        proc = engbot(command, cwd=tmp_path, env=env)
        assert proc.returncode == 2, (command, proc.stdout, proc.stderr)
        assert NAMED[case] in proc.stderr and no_traceback(proc), (command, proc.stderr)


def test_a_bad_log_level_is_named_by_every_command(tmp_path: Path) -> None:
    for argv in (("ask", "hi"), ("chat",), ("doctor",)):
        proc = engbot(*argv, cwd=tmp_path, env={"LOG_LEVEL": "verbose"}, stdin="")
        assert proc.returncode == 2 and "LOG_LEVEL='verbose' is not valid" in proc.stderr, (argv, proc.stderr)
        assert no_traceback(proc), proc.stderr


@pytest.mark.parametrize(("flags", "named"), [
    (("--max-tokens", "99999"), "--max-tokens"),  # (said "at most -97951 tokens fit")
    (("--max-tokens", "3000"), "--max-tokens"),  # more than CONTEXT_LENGTH leaves for the question
    (("--max-tokens", "0"), "--max-tokens"),
    (("--max-tokens", "-5"), "--max-tokens"),
    (("--temperature", "-1"), "--temperature"),
    (("--seed", "-7"), "--seed"),
])
def test_generation_flags_are_checked_as_their_settings(tmp_path: Path, flags: tuple[str, str], named: str) -> None:
    proc = engbot("ask", *flags, "hi", cwd=tmp_path)
    assert proc.returncode == 2 and f"{named}='{flags[1]}' is not valid" in proc.stderr, proc.stderr
    assert no_traceback(proc)


def test_a_missing_env_file_is_an_error_and_a_given_one_is_read(tmp_path: Path) -> None:
    proc = engbot("--env-file", "missing.env", "ask", "hi", cwd=tmp_path)
    assert proc.returncode == 2 and "missing.env" in proc.stderr and proc.stdout == ""
    (tmp_path / "other.env").write_text("MAX_NEW_TOKENS=0\n")
    proc = engbot("--env-file", "other.env", "doctor", cwd=tmp_path)
    assert proc.returncode == 2 and "MAX_NEW_TOKENS" in proc.stderr


def test_ask_prints_the_answer_alone_and_marks_one_cut_at_max_tokens(tmp_path: Path) -> None:
    shutil.copy(ROOT / ".env.example", tmp_path / ".env")  # LOG_LEVEL=INFO: `engbot run`'s, not ask's
    proc = engbot("ask", "What is the capital of France?", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() and proc.stderr == "", proc.stderr
    proc = engbot("ask", "--max-tokens", "3", "Write a long story.", cwd=tmp_path)
    assert proc.returncode == 0 and "[cut at 3 tokens: --max-tokens or MAX_NEW_TOKENS]" in proc.stderr
    proc = engbot("-v", "ask", "--max-tokens", "3", "Hi", cwd=tmp_path)
    assert " INFO " in proc.stderr  # --verbose shows LOG_LEVEL's lines


def read_some(proc: subprocess.Popen[bytes], size: int, timeout: float = 60) -> bytes:
    """At least ``size`` bytes of the process's stdout, as they stream."""
    assert proc.stdout is not None
    got = b""
    deadline = time.monotonic() + timeout
    while len(got) < size:
        assert time.monotonic() < deadline and proc.poll() is None, got
        got += os.read(proc.stdout.fileno(), 4096)
    return got


@pytest.mark.parametrize("command", ["ask", "chat"])
def test_ctrl_c_during_an_answer_stops_at_once(tmp_path: Path, command: str) -> None:
    # SHUTDOWN_GRACE_S is a bot's grace for its users' answers; an interactive command waited it out (30 s)
    environ = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT), "HOME": str(tmp_path),
               "SHUTDOWN_GRACE_S": "30", "MAX_NEW_TOKENS": "1500", "NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "engbot", command, *([LONG_QUESTION] if command == "ask" else [])]
    proc = subprocess.Popen(argv, cwd=tmp_path, env=environ, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        if command == "chat":
            assert proc.stdin is not None
            proc.stdin.write(LONG_QUESTION.encode() + b"\n")
            proc.stdin.flush()
        read_some(proc, 80)  # the answer is streaming
        replicas = psutil.Process(proc.pid).children(recursive=True)
        assert replicas
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=25)
        elapsed = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert proc.returncode == 130
    assert elapsed < 15, elapsed  # well before SHUTDOWN_GRACE_S; not a speed claim
    _, alive = psutil.wait_procs(replicas, timeout=10)
    assert not alive, alive


def test_run_with_http_port_taken_says_so_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = engbot("run", cwd=tmp_path, env={"HTTP_HOST": "127.0.0.1", "HTTP_PORT": str(port)})
    assert proc.returncode == 2 and no_traceback(proc), proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("engbot:")]
    assert len(lines) == 1 and "HTTP_PORT" in lines[0] and "in use" in lines[0], proc.stderr


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wait_for(url: str, status: int, proc: subprocess.Popen[str], timeout: float = 90) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            got, body = get(url)
            if got == status:
                return body
        except (urllib.error.URLError, ConnectionError):
            pass
        assert time.monotonic() < deadline and proc.poll() is None, f"{url} never answered {status}"
        time.sleep(0.2)


def run_process(tmp_path: Path, **env: str) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    environ = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT), "HOME": str(tmp_path),
               "HTTP_PORT": str(port), "NUM_WORKERS": "1", "NUM_THREADS": "1", "SHUTDOWN_GRACE_S": "1",
               "LOG_LEVEL": "INFO", **env}
    proc = subprocess.Popen([sys.executable, "-m", "engbot", "run"], cwd=tmp_path, env=environ,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, f"http://127.0.0.1:{port}"


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    return stderr


def test_run_without_a_platform_serves_the_playground_instead_of_exiting(tmp_path: Path) -> None:
    # it exited 2: under compose's `restart: unless-stopped` a restart loop, and /readyz never answered
    proc, url = run_process(tmp_path)
    try:
        ready = wait_for(f"{url}/readyz", 200, proc)
        assert '"web": true' in ready
        status, page = get(url + "/")
        assert status == 200 and "engbot" in page and "playground.js" in page
    finally:
        stderr = stop(proc)
    assert "no chat platform is configured" in stderr and "the playground" in stderr
    assert f"{url}/" in stderr and stderr.rstrip().endswith("stopped")


def test_run_keeps_trying_an_unreachable_slack_while_readyz_says_why(tmp_path: Path) -> None:
    # it gave up at once (exit 1); nothing listens on port 9
    proc, url = run_process(tmp_path, SLACK_BOT_TOKEN="xoxb-1-2-x", SLACK_APP_TOKEN="xapp-1-2-x",
                            SLACK_API_URL="http://127.0.0.1:9/api/")
    try:
        body = wait_for(f"{url}/readyz", 503, proc)
        deadline = time.monotonic() + 60
        while "could not connect (2 tries)" not in body:  # (each try: slack_sdk's own retry, then our pause)
            assert time.monotonic() < deadline and proc.poll() is None, body
            time.sleep(0.2)
            body = get(f"{url}/readyz")[1]
        assert '"slack": false' in body and "127.0.0.1:9" in body and '"web": true' in body
    finally:
        stderr = stop(proc)
    assert stderr.count("slack could not connect") >= 2 and "trying again in 2 s" in stderr
    assert "xoxb-1-2-x" not in stderr


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


def test_doctor_checks_each_of_several_models(tmp_path: Path) -> None:
    pythia = write_gpt_neox_ggml(tmp_path / "pythia.bin", ftype="q5_0")
    env = {"MODELS": f"fast=smollm2-135m-instruct.q4_1,code={pythia}", "MODELS_CODE_CONTEXT_LENGTH": "512",
           "MODELS_CODE_MAX_NEW_TOKENS": "64", "MAX_LOADED_MODELS": "1"}
    proc = engbot("doctor", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "model fast (DEFAULT_MODEL)" in proc.stdout and "model code;" in proc.stdout
    assert "MODELS_CODE_<SETTING>" in proc.stdout and "gpt_neox" in proc.stdout and "llama" in proc.stdout
    assert proc.stdout.splitlines().count("OK") == 2 and "least recently used" in proc.stdout
    proc = engbot("doctor", cwd=tmp_path, env={**env, "MODELS": "fast=smollm2-135m-instruct.q4_1,code=nope"})
    assert proc.returncode == 2 and "MODELS='code=nope' is not valid" in proc.stderr, proc.stderr
