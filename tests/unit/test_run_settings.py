"""The one validation `engbot run` and `engbot doctor` share (engbot/settings.py), the names of every setting, who
may use the playground (bots/web/access.py) and the pauses between connection attempts (engbot/connect.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from dotenv import dotenv_values

from bots.web.access import Access, bearer, hostname, is_loopback, same_origin
from engbot.connect import pause_before
from engbot.run import web_access
from engbot.settings import OPTIONAL_NAMES, SETTING_NAMES, AppSettings, check_settings, is_setting

ROOT = Path(__file__).resolve().parents[2]
SLACK = {"SLACK_BOT_TOKEN": "xoxb-1-2-abc", "SLACK_APP_TOKEN": "xapp-1-A1-2-abc"}


@pytest.mark.parametrize(("environ", "named"), [
    ({"HTTP_PORT": "99999"}, "HTTP_PORT"),
    ({"HTTP_HOST": "my host"}, "HTTP_HOST"),
    ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
    ({"LOG_LEVEL": "verbose"}, "LOG_LEVEL"),
    ({"SLACK_BOT_TOKEN": "garbage", "SLACK_APP_TOKEN": "xapp-1-A1-2-abc"}, "SLACK_BOT_TOKEN"),
    ({"SLACK_BOT_TOKEN": "xoxb-1-2-abc"}, "SLACK_APP_TOKEN"),  # a bot token without an app token
    ({"QUEUE_BACKEND": "redis", "REDIS_URL": "http://x"}, "REDIS_URL"),
    ({"DISCORD_BOT_TOKEN": "a b"}, "DISCORD_BOT_TOKEN"),
    ({"PLAYGROUND_TOKEN": "short"}, "PLAYGROUND_TOKEN"),
    ({"NUM_WORKERS": "0"}, "NUM_WORKERS"),
    ({"ENGBOT_CONFIG": "/nonexistent/engbot.toml"}, "ENGBOT_CONFIG"),
    ({"STATE_PATH": "/"}, "STATE_PATH"),
    ({"SHOW_THINKING": "maybe"}, "SHOW_THINKING"),
    ({"THINKING_TAGS": "<think>"}, "THINKING_TAGS"),
    ({"FILE_MAX_COUNT": "-1"}, "FILE_MAX_COUNT"),
    ({"FILE_EXTRACT_TIMEOUT_S": "0"}, "FILE_EXTRACT_TIMEOUT_S"),
    ({"MODEL_BACKEND": "openai"}, "OPENAI_BASE_URL"),  # the remote backend's settings are run's too
    ({"MODEL_BACKEND": "openai", "OPENAI_BASE_URL": "ftp://x"}, "OPENAI_BASE_URL"),
    ({"MODELS": "fast=never-pulled-model"}, "MODELS"),  # and so are several models'
    ({"MODELS": "a=smollm2-135m-instruct.q4_1", "DEFAULT_MODEL": "b"}, "DEFAULT_MODEL"),
    ({"MODELS": "a=smollm2-135m-instruct.q4_1", "MODELS_A_NUM_WORKERS": "0"}, "MODELS_A_NUM_WORKERS"),
])
def test_every_setting_run_refuses_is_named(environ: dict[str, str], named: str) -> None:
    settings, errors = check_settings(environ, check_model=False)
    assert settings is None and [e.name for e in errors] == [named]


def test_every_problem_is_named_at_once() -> None:
    _, errors = check_settings({"HTTP_PORT": "-1", "LOG_FORMAT": "xml", "MAX_NEW_TOKENS": "0",
                                "DISCORD_BOT_TOKEN": "a b"}, check_model=False)
    names = [e.name for e in errors]  # (one of the HTTP and logging settings: the first bad one)
    assert len(names) == 3 and {"MAX_NEW_TOKENS", "DISCORD_BOT_TOKEN"} <= set(names), names


def test_good_settings_and_the_playground_mode() -> None:
    settings, errors = check_settings({}, check_model=False)
    assert settings is not None and not errors and settings.playground_mode
    assert settings.app.http_host == "127.0.0.1" and settings.app.loopback  # this machine only, by default
    settings, _ = check_settings(SLACK, check_model=False)
    assert settings is not None and [p.name for p, _ in settings.platforms] == ["slack"]
    assert not settings.playground_mode
    # with QUEUE_BACKEND=redis this process loads no model: a missing model file is not run's business
    settings, errors = check_settings({"QUEUE_BACKEND": "redis", "MODEL_PATH": "/nonexistent.gguf"})
    assert settings is not None, errors
    _, errors = check_settings({"MODEL_PATH": "/nonexistent.gguf"})
    assert [e.name for e in errors] == ["MODEL_PATH"]


def test_every_setting_is_known_and_documented_once() -> None:
    # doctor listed settings by name prefixes and missed PARALLEL_SLOTS, KV_CACHE_*, FLASH_ATTN, JOB_DEADLINE_S
    documented = [line.split("=", 1)[0] for line in (ROOT / ".env.example").read_text().splitlines()
                  if "=" in line and not line.startswith("#")]
    assert len(documented) == len(set(documented)), "a setting documented twice"
    assert all(is_setting(name) for name in documented), [n for n in documented if not is_setting(n)]
    assert set(SETTING_NAMES) <= set(documented), set(SETTING_NAMES) - set(documented)
    for name in ("PARALLEL_SLOTS", "KV_CACHE_TOKENS", "KV_CACHE_TYPE", "FLASH_ATTN", "JOB_DEADLINE_S"):
        assert is_setting(name)
    assert not is_setting("PATH") and not is_setting("HOME")
    assert set(dotenv_values(ROOT / ".env.example")) == set(documented)
    # set only when wanted: shown commented out (an empty value would override the image's or the hub's default)
    commented = [line[2:].split("=", 1)[0] for line in (ROOT / ".env.example").read_text().splitlines()
                 if line.startswith("# ") and "=" in line and line[2:].split("=", 1)[0].isupper()]
    assert set(OPTIONAL_NAMES) <= set(commented) and not set(OPTIONAL_NAMES) & set(documented)
    assert is_setting("MODELS_CODE_NUM_WORKERS") and is_setting("HF_TOKEN")


def test_run_checks_the_settings_of_the_backend_it_uses() -> None:
    settings, errors = check_settings({"MODEL_BACKEND": "openai", "OPENAI_BASE_URL": "http://vllm:8000/v1"})
    assert settings is not None and settings.remote is not None and settings.fleet is None, errors
    settings, errors = check_settings({"MODELS": "a=smollm2-135m-instruct.q4_1,b=smollm2-135m-instruct.q4_1"})
    assert settings is not None and settings.fleet is not None and settings.fleet.names == ("a", "b"), errors
    # with QUEUE_BACKEND=redis the hosts answer: their model settings are not this process's business
    settings, errors = check_settings({"QUEUE_BACKEND": "redis", "MODELS": "a=never-pulled-model"})
    assert settings is not None and settings.fleet is None, errors


def test_the_local_url_of_the_playground() -> None:
    def url(host: str) -> str:
        return AppSettings(host, 8080, "info", "text").local_url

    assert url("0.0.0.0") == "http://127.0.0.1:8080/" and url("::") == "http://[::1]:8080/"
    assert url("127.0.0.1") == "http://127.0.0.1:8080/" and url("::1") == "http://[::1]:8080/"


def test_loopback_names_hosts_tokens_and_origins() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost", "LOCALHOST"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "10.0.0.1", "example.com", "localhost.example.com", ""))
    assert hostname("127.0.0.1:8080") == "127.0.0.1" and hostname("[::1]:80") == "::1" and hostname("a") == "a"
    assert bearer("Bearer abc") == "abc" and bearer("bearer  abc ") == "abc"
    assert bearer("Basic abc") is None and bearer(None) is None and bearer("Bearer ") is None
    assert same_origin(None, "127.0.0.1:8080") and same_origin("http://127.0.0.1:8080", "127.0.0.1:8080")
    assert not same_origin("http://evil.example", "127.0.0.1:8080")


def test_who_may_chat_and_steer() -> None:
    local = Access(None, open_without_token=True)
    assert local.chat_refusal(None, "127.0.0.1:8080") is None and local.chat_refusal(None, "localhost:8080") is None
    assert local.chat_refusal(None, "rebound.example:8080") is not None  # DNS rebinding: another name
    assert not local.admin(None) and not local.admin("anything")
    closed = Access(None, open_without_token=False, locked="set PLAYGROUND_TOKEN")
    assert closed.chat_refusal(None, "127.0.0.1:8080") == "set PLAYGROUND_TOKEN"
    token = "0123456789abcdef"
    guarded = Access(token, open_without_token=False)
    assert guarded.chat_refusal(token, "bot.example:8080") is None and guarded.admin(token)
    assert guarded.chat_refusal(None, "127.0.0.1:8080") is not None
    assert guarded.chat_refusal("wrong", "127.0.0.1:8080") is not None and not guarded.admin("wrong")
    assert token not in repr(guarded)


@pytest.mark.parametrize(("environ", "open_chat"), [
    ({}, True),  # no platform, loopback: the playground is the bot's platform
    ({"HTTP_HOST": "0.0.0.0"}, False),  # reachable from elsewhere: PLAYGROUND_TOKEN or nothing
    (SLACK, False),  # Slack configured: the status page only, unless PLAYGROUND_TOKEN
])
def test_the_playground_is_open_without_a_token_only_on_loopback_without_platforms(
        environ: dict[str, str], open_chat: bool) -> None:
    settings, _ = check_settings(environ, check_model=False)
    assert settings is not None
    access = web_access(settings, playground=settings.playground_mode)
    assert access.open_without_token is open_chat
    assert open_chat or "PLAYGROUND_TOKEN" in access.locked


def test_connection_attempts_back_off() -> None:
    assert [pause_before(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
