"""The Slack settings (SLACK_*), read once from the environment and checked; tokens masked in ``repr``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Literal

from bots.limits import rate_limit_from_environ
from bots.slack.assistant import DEFAULT_PROMPTS, SuggestedPrompt, parse_prompts
from bots.slack.events import AccessPolicy
from engine.config import Env, mask
from engine.errors import ConfigError

DEFAULT_API_URL = "https://slack.com/api/"
UPDATE_BUDGET = (5, 6.0)  # chat.update is rate tier 3: 50 a minute per workspace, here in bursts of at most 5
START_BUDGET = (18, 60.0)  # chat.startStream (and stopStream) are tier 2: 20 a minute; a little to spare
APPEND_BUDGET = (9, 6.0)  # chat.appendStream is tier 4: 100 a minute per workspace, every answer's appends
Streaming = Literal["auto", "native", "edits"]


@dataclass(frozen=True)
class SlackSettings:
    """The Slack adapter's settings, read once from the environment. Tokens are masked in ``repr``."""

    bot_token: str
    app_token: str | None = None
    mode: Literal["socket", "http"] = "socket"
    signing_secret: str | None = None
    http_port: int = 3000
    http_host: str = "0.0.0.0"
    api_url: str = DEFAULT_API_URL
    follow_threads: bool = True
    allowed_channels: frozenset[str] = frozenset()
    allowed_users: frozenset[str] = frozenset()
    admin_users: frozenset[str] = frozenset()  # may stop, regenerate and continue anyone's answers
    rate_limit_per_user: int = 5
    rate_limit_period_s: float = 60.0
    streaming: Streaming = "auto"  # native: chat.startStream/appendStream/stopStream; edits: chat.update
    suggested_prompts: tuple[SuggestedPrompt, ...] = DEFAULT_PROMPTS
    # not settings: tuning the tests change
    message_limit: int = 3000  # characters per Slack message as sent (mrkdwn); chat.update refuses ~3,500+
    edit_interval_s: float = 1.0  # an answer edits its message about once a second...
    update_budget: tuple[int, float] = UPDATE_BUDGET  # ...and every answer's edits share this (calls, per seconds)
    stream_interval_s: float = 0.5  # a natively streamed answer appends at most twice a second...
    append_budget: tuple[int, float] = APPEND_BUDGET  # ...within the workspace's appendStream budget
    start_budget: tuple[int, float] = START_BUDGET  # streams started (each one stopped too): beyond, edits
    stream_limit: int = 12_000  # characters of Markdown per streamed message; the rest continues in another

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, str) and any(m in f.name for m in ("token", "secret")):
                value = mask(f.name, value)
            shown.append(f"{f.name}={value!r}")
        return f"SlackSettings({', '.join(shown)})"

    @property
    def policy(self) -> AccessPolicy:
        return AccessPolicy(self.follow_threads, self.allowed_channels, self.allowed_users)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> SlackSettings | None:
        """Read and check the Slack settings. None when neither SLACK_BOT_TOKEN nor SLACK_APP_TOKEN is set (Slack
        is off); ``ConfigError`` naming the variable when a value is missing or malformed."""
        env = Env(environ)
        bot_token, app_token = env.raw("SLACK_BOT_TOKEN") or "", env.raw("SLACK_APP_TOKEN") or ""
        if not bot_token and not app_token:
            return None
        mode = env.choice("SLACK_MODE", "socket", ("socket", "http"))
        _check_token("SLACK_BOT_TOKEN", bot_token, "xoxb-", "the Bot User OAuth Token (OAuth & Permissions)")
        signing_secret = env.raw("SLACK_SIGNING_SECRET") or None
        if mode == "socket" or app_token:
            _check_token("SLACK_APP_TOKEN", app_token, "xapp-",
                         "an app-level token with the connections:write scope (Basic Information > App-Level "
                         "Tokens); Socket Mode needs it")
        if mode == "http" and not signing_secret:
            raise ConfigError("SLACK_SIGNING_SECRET", "", "required when SLACK_MODE=http (Basic Information > "
                              "Signing Secret): requests are verified with it")
        api_url = env.raw("SLACK_API_URL") or DEFAULT_API_URL
        if not api_url.startswith(("https://", "http://")):
            raise ConfigError("SLACK_API_URL", api_url, "expected an http(s) URL such as https://slack.com/api/")
        limiter = rate_limit_from_environ(environ)
        streaming = env.choice("SLACK_STREAMING", "auto", ("auto", "native", "edits"))
        try:
            prompts = parse_prompts(env.raw("SLACK_SUGGESTED_PROMPTS"))
        except ValueError as exc:
            raise ConfigError("SLACK_SUGGESTED_PROMPTS", env.raw("SLACK_SUGGESTED_PROMPTS") or "", str(exc)) from None
        return cls(
            bot_token=bot_token,
            app_token=app_token or None,
            mode="http" if mode == "http" else "socket",
            signing_secret=signing_secret,
            http_port=env.int("SLACK_HTTP_PORT", 3000, lo=0, hi=65535),
            http_host=env.raw("SLACK_HTTP_HOST") or "0.0.0.0",
            api_url=api_url if api_url.endswith("/") else api_url + "/",
            follow_threads=env.bool("SLACK_FOLLOW_THREADS", True),
            allowed_channels=_ids(env, "SLACK_ALLOWED_CHANNELS", "CGD", "channel IDs such as C0123ABCD"),
            allowed_users=_ids(env, "SLACK_ALLOWED_USERS", "UW", "user IDs such as U0123ABCD"),
            admin_users=_ids(env, "SLACK_ADMIN_USERS", "UW", "user IDs such as U0123ABCD"),
            rate_limit_per_user=limiter.limit,
            rate_limit_period_s=limiter.period_s,
            streaming="native" if streaming == "native" else "edits" if streaming == "edits" else "auto",
            suggested_prompts=prompts,
        )


def _check_token(name: str, value: str, prefix: str, what: str) -> None:
    if not value:
        raise ConfigError(name, "", f"missing: set it to {what}")
    if not value.startswith(prefix) or any(c.isspace() for c in value):
        raise ConfigError(name, mask(name, value), f"expected a token starting with {prefix}: {what}")


def _ids(env: Env, name: str, first_letters: str, example: str) -> frozenset[str]:
    ids = frozenset(str(value) for value in env.csv(name))
    for value in ids:
        if not (value[0] in first_letters and value.isalnum() and value.isupper()):
            raise ConfigError(name, ",".join(sorted(ids)), f"expected comma-separated {example} (names such as "
                              "#general do not work: copy the ID from the channel or profile details)")
    return ids
