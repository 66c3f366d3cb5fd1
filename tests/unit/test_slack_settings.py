"""Slack settings from the environment: defaults, checks that name the variable, tokens kept out of sight."""

from __future__ import annotations

import pytest

from bots.limits import rate_limit_from_environ
from bots.slack.settings import SlackSettings
from engine.errors import ConfigError

BOT = "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"
APP = "xapp-1-A0123456789-1234567890123-0123456789abcdef0123456789abcdef"


def test_no_tokens_means_slack_is_off() -> None:
    assert SlackSettings.from_environ({}) is None
    assert SlackSettings.from_environ({"SLACK_BOT_TOKEN": "", "SLACK_MODE": "http"}) is None


def test_socket_mode_defaults() -> None:
    settings = SlackSettings.from_environ({"SLACK_BOT_TOKEN": BOT, "SLACK_APP_TOKEN": f" {APP} "})
    assert settings is not None
    assert (settings.bot_token, settings.app_token, settings.mode) == (BOT, APP, "socket")
    assert settings.api_url == "https://slack.com/api/" and settings.http_port == 3000
    assert settings.follow_threads and not settings.allowed_channels and not settings.allowed_users
    assert (settings.rate_limit_per_user, settings.rate_limit_period_s) == (5, 60.0)


def test_every_setting_is_read() -> None:
    settings = SlackSettings.from_environ({
        "SLACK_BOT_TOKEN": BOT, "SLACK_MODE": "HTTP", "SLACK_SIGNING_SECRET": "abc123", "SLACK_HTTP_PORT": "8080",
        "SLACK_HTTP_HOST": "127.0.0.1", "SLACK_API_URL": "http://127.0.0.1:9999/api", "SLACK_FOLLOW_THREADS": "no",
        "SLACK_ALLOWED_CHANNELS": "C0123ABCD, G0456EFGH", "SLACK_ALLOWED_USERS": "U0123ABCD,,W0456EFGH",
        "RATE_LIMIT_PER_USER": "0", "RATE_LIMIT_PERIOD_S": "30",
    })
    assert settings is not None
    assert settings.mode == "http" and settings.app_token is None and settings.signing_secret == "abc123"
    assert (settings.http_host, settings.http_port) == ("127.0.0.1", 8080)
    assert settings.api_url == "http://127.0.0.1:9999/api/"  # slack_sdk joins method names to it
    assert not settings.follow_threads
    assert settings.allowed_channels == {"C0123ABCD", "G0456EFGH"}
    assert settings.allowed_users == {"U0123ABCD", "W0456EFGH"}
    assert (settings.rate_limit_per_user, settings.rate_limit_period_s) == (0, 30.0)


@pytest.mark.parametrize(("environ", "variable"), [
    ({"SLACK_APP_TOKEN": APP}, "SLACK_BOT_TOKEN"),  # missing
    ({"SLACK_BOT_TOKEN": "xoxp-user-token-1234", "SLACK_APP_TOKEN": APP}, "SLACK_BOT_TOKEN"),  # a user token
    ({"SLACK_BOT_TOKEN": BOT}, "SLACK_APP_TOKEN"),  # socket mode needs it
    ({"SLACK_BOT_TOKEN": BOT, "SLACK_APP_TOKEN": BOT}, "SLACK_APP_TOKEN"),  # swapped
    ({"SLACK_BOT_TOKEN": BOT, "SLACK_MODE": "http"}, "SLACK_SIGNING_SECRET"),
    ({"SLACK_BOT_TOKEN": BOT, "SLACK_APP_TOKEN": APP, "SLACK_MODE": "webhook"}, "SLACK_MODE"),
    ({"SLACK_BOT_TOKEN": BOT, "SLACK_APP_TOKEN": APP, "SLACK_HTTP_PORT": "70000"}, "SLACK_HTTP_PORT"),
    ({"SLACK_BOT_TOKEN": BOT, "SLACK_APP_TOKEN": APP, "SLACK_API_URL": "slack.com/api"}, "SLACK_API_URL"),
    ({"SLACK_BOT_TOKEN": BOT, "SLACK_APP_TOKEN": APP, "SLACK_FOLLOW_THREADS": "maybe"}, "SLACK_FOLLOW_THREADS"),
    ({"SLACK_BOT_TOKEN": BOT, "SLACK_APP_TOKEN": APP, "SLACK_ALLOWED_CHANNELS": "#general"},
     "SLACK_ALLOWED_CHANNELS"),
    ({"SLACK_BOT_TOKEN": BOT, "SLACK_APP_TOKEN": APP, "SLACK_ALLOWED_USERS": "alice"}, "SLACK_ALLOWED_USERS"),
    ({"SLACK_BOT_TOKEN": BOT, "SLACK_APP_TOKEN": APP, "RATE_LIMIT_PER_USER": "-1"}, "RATE_LIMIT_PER_USER"),
    ({"SLACK_BOT_TOKEN": BOT, "SLACK_APP_TOKEN": APP, "RATE_LIMIT_PERIOD_S": "0"}, "RATE_LIMIT_PERIOD_S"),
])
def test_bad_values_name_their_variable_and_never_show_a_token(environ: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as caught:
        SlackSettings.from_environ(environ)
    assert caught.value.name == variable
    message = str(caught.value)
    assert variable in message
    for token in (BOT, APP, "xoxp-user-token-1234"):
        assert token not in message and token[8:] not in message


def test_repr_masks_tokens_and_secrets() -> None:
    settings = SlackSettings(bot_token=BOT, app_token=APP, signing_secret="s3cr3t-signing-value")
    shown = repr(settings)
    assert "xoxb-***" in shown and "xapp-***" in shown
    for secret in (BOT, APP, "s3cr3t-signing-value"):
        assert secret not in shown and secret[6:] not in shown


def test_the_rate_limit_is_shared_by_the_adapters() -> None:
    limiter = rate_limit_from_environ({"RATE_LIMIT_PER_USER": "2", "RATE_LIMIT_PERIOD_S": "10"})
    assert (limiter.limit, limiter.period_s) == (2, 10.0)
    assert [limiter.check("U1") for _ in range(2)] == [0.0, 0.0] and limiter.check("U1") > 0
    assert limiter.check("U2") == 0.0
    off = rate_limit_from_environ({"RATE_LIMIT_PER_USER": "0"})
    assert all(off.check("U1") == 0.0 for _ in range(100))
