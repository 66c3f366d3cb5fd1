"""Every bad setting stops start-up with a message naming the variable, the value and what is allowed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.config import EngineSettings, available_cpus, load_environ, mask
from engine.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]

BAD = [
    ({"NUM_WORKERS": "0"}, "NUM_WORKERS", "from 1 to 64"),
    ({"NUM_WORKERS": "two"}, "NUM_WORKERS", "whole number"),
    ({"NUM_THREADS": "-1"}, "NUM_THREADS", "auto or a whole number from 1"),
    ({"NUM_WORKERS": "many"}, "NUM_WORKERS", "auto or a whole number"),
    ({"LLM_LIB": "fast"}, "LLM_LIB", "auto, avx2, avx, basic"),
    ({"MODEL_BACKEND": "torch"}, "MODEL_BACKEND", "auto, llama_cpp, ctransformers"),
    ({"MODEL_TYPE": "bert"}, "MODEL_TYPE", "gpt_neox"),
    ({"LOAD_ON_FLY": "sometimes"}, "LOAD_ON_FLY", "true or false"),
    ({"KEEP_ALIVE_S": "-5"}, "KEEP_ALIVE_S", "at least 0"),
    ({"QUEUE_MAX_SIZE": "0"}, "QUEUE_MAX_SIZE", "from 1"),
    ({"GENERATION_TIMEOUT_S": "0"}, "GENERATION_TIMEOUT_S", "above 0"),
    ({"MAX_NEW_TOKENS": "0"}, "MAX_NEW_TOKENS", "from 1"),
    ({"MAX_NEW_TOKENS": "4096", "CONTEXT_LENGTH": "2048"}, "MAX_NEW_TOKENS", "less than CONTEXT_LENGTH"),
    ({"TEMPERATURE": "hot"}, "TEMPERATURE", "a number"),
    ({"TEMPERATURE": "nan"}, "TEMPERATURE", "a number"),
    ({"TOP_P": "0"}, "TOP_P", "exclusive"),
    ({"TOP_K": "-3"}, "TOP_K", "from 0"),
    ({"REPEAT_PENALTY": "0"}, "REPEAT_PENALTY", "exclusive"),
    ({"CONTEXT_LENGTH": "lots"}, "CONTEXT_LENGTH", "whole number"),
    ({"PROMPT_TEMPLATE": "vicuna"}, "PROMPT_TEMPLATE", "chatml, oasst"),
    ({"SEED": "-2"}, "SEED", "from -1"),
]


@pytest.mark.parametrize(("env", "name", "allowed"), BAD, ids=[b[1] + "=" + next(iter(b[0].values())) for b in BAD])
def test_bad_values_name_the_variable(env: dict[str, str], name: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as info:
        EngineSettings.from_environ(env)
    assert info.value.name == name
    message = str(info.value)
    assert message.startswith(f"{name}=") and allowed in message


def _model_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        EngineSettings.from_environ({"MODEL_PATH": str(path)})
    assert info.value.name == "MODEL_PATH"
    return str(info.value)


def test_model_path_problems(tmp_path: Path, model_path: Path) -> None:
    assert "does not exist" in _model_error(tmp_path / "missing.gguf")
    assert "is a directory" in _model_error(tmp_path)
    (tmp_path / "empty.gguf").write_bytes(b"")
    assert "is empty" in _model_error(tmp_path / "empty.gguf")
    (tmp_path / "notes.txt").write_text("hello, not a model")
    assert "neither a GGUF nor a legacy GGML" in _model_error(tmp_path / "notes.txt")
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(model_path.read_bytes()[: 5 * 2**20])
    assert "truncated" in _model_error(truncated)
    with pytest.raises(ConfigError, match=r"MODEL_BACKEND.*GGUF file"):
        EngineSettings.from_environ({"MODEL_BACKEND": "ctransformers"})


def test_defaults_and_valid_values(model_path: Path) -> None:
    s = EngineSettings.from_environ({})
    assert s.model_path == model_path and s.model_backend == "llama_cpp"
    assert s.system_prompt == "You are a helpful assistant." and s.defaults.max_new_tokens == 512
    assert s.num_workers == 1 and s.parallel_slots == 16  # auto, for a GGUF model: one replica batching all
    assert EngineSettings.from_environ({"NUM_WORKERS": "2"}).parallel_slots == 8  # 16 shared out
    assert s.adaptive_threads and s.kv_cache_tokens == 0  # NUM_THREADS=auto, KV_CACHE_TOKENS=auto
    s = EngineSettings.from_environ({"NUM_WORKERS": "3", "LOAD_ON_FLY": "yes", "TEMPERATURE": "0",
                                     "SYSTEM_PROMPT": "", "PROMPT_TEMPLATE": "ChatML"})
    assert (s.num_workers, s.load_on_fly, s.defaults.temperature, s.system_prompt, s.prompt_template) == (
        3, True, 0.0, "", "chatml")


def test_adaptive_threads_share_the_cpus_this_process_may_use() -> None:
    cpus = len(os.sched_getaffinity(0))
    s = EngineSettings.from_environ({"NUM_THREADS": "auto"})
    assert s.adaptive_threads and s.num_threads == cpus and s.num_workers == 1  # one replica on every CPU
    s = EngineSettings.from_environ({"NUM_THREADS": "auto", "NUM_WORKERS": "auto"})
    assert s.num_workers == 1 and s.layout == f"1 replica x auto threads (of {cpus} CPUs) x 16 slots"
    s = EngineSettings.from_environ({"NUM_THREADS": "2", "NUM_WORKERS": "auto"})
    assert not s.adaptive_threads and s.num_workers == max(1, cpus // 2)


def test_available_cpus_honour_a_cgroup_quota(tmp_path: Path) -> None:
    cpus = len(os.sched_getaffinity(0))
    assert available_cpus(tmp_path) == cpus  # no cgroup files: the affinity
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert available_cpus(tmp_path) == cpus
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # docker run --cpus 0.5
    assert available_cpus(tmp_path) == 1
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert available_cpus(v1) == 1
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert available_cpus(v1) == cpus


def test_kv_cache_must_hold_one_conversation() -> None:
    with pytest.raises(ConfigError, match="KV_CACHE_TOKENS"):
        EngineSettings.from_environ({"CONTEXT_LENGTH": "2048", "KV_CACHE_TOKENS": "1024"})
    assert EngineSettings.from_environ({"KV_CACHE_TOKENS": "8192"}).kv_cache_tokens == 8192


def test_oversubscription_warns(caplog: pytest.LogCaptureFixture) -> None:
    EngineSettings.from_environ({"NUM_WORKERS": "64", "NUM_THREADS": "4"})
    assert "more than the" in caplog.text


def test_env_file_is_read_under_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("NUM_WORKERS=3\nQUEUE_MAX_SIZE=7\n")
    monkeypatch.setenv("QUEUE_MAX_SIZE", "9")
    environ = load_environ(env_file)
    assert environ["NUM_WORKERS"] == "3" and environ["QUEUE_MAX_SIZE"] == "9"


def test_secrets_are_masked() -> None:
    assert mask("SLACK_BOT_TOKEN", "xoxb-123-456-secretvalue") == "xoxb-*** (24 chars)"
    assert "secret" not in mask("DISCORD_BOT_TOKEN", "abc.secret.def")
    assert mask("REDIS_URL", "redis://user:hunter2@localhost:6379/0") == "redis://user:***@localhost:6379/0"
    assert mask("NUM_WORKERS", "2") == "2"
    assert mask("PLAYGROUND_TOKEN", "0123456789abcdef0123") == "*** (20 chars)"
    assert mask("SLACK_SIGNING_SECRET", "abc") == "*** (3 chars)"
    assert mask("app_token", "xapp-1-x") == "xapp-*** (8 chars)"


def test_settings_that_only_mention_a_secret_word_are_shown() -> None:
    # a name that merely contains TOKEN or KEY is no secret: doctor printed MAX_NEW_TOKENS *** (3 chars)
    for name, value in (("MAX_NEW_TOKENS", "512"), ("KV_CACHE_TOKENS", "4096"), ("REDIS_KEY_PREFIX", "engbot:")):
        assert mask(name, value) == value, name


def test_cli_exits_2_with_one_line_for_bad_settings(tmp_path: Path) -> None:
    for env, name in (({"NUM_WORKERS": "0"}, "NUM_WORKERS"), ({"MODEL_PATH": str(tmp_path)}, "MODEL_PATH"),
                      ({"LLM_LIB": "fast"}, "LLM_LIB")):
        proc = subprocess.run([sys.executable, "-m", "engbot", "ask", "hi"], capture_output=True, text=True,
                              env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **env}, cwd=tmp_path, timeout=60,
                              check=False)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"engbot: {name}="), proc.stderr
