"""The playground's settings (PLAYGROUND_TOKEN, and the shared RATE_LIMIT_*), read once and checked; the token stays
out of ``repr``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from bots.limits import rate_limit_from_environ
from engine.config import Env, mask
from engine.errors import ConfigError

MIN_TOKEN_CHARS = 16


@dataclass(frozen=True, slots=True)
class WebSettings:
    token: str | None = field(default=None, repr=False)  # PLAYGROUND_TOKEN: who presents it may chat and steer
    rate_limit_per_user: int = 5
    rate_limit_period_s: float = 60.0

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> WebSettings:
        env = Env(environ)
        token = env.raw("PLAYGROUND_TOKEN") or None
        if token is not None and (len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token)):
            raise ConfigError("PLAYGROUND_TOKEN", mask("PLAYGROUND_TOKEN", token),
                              f"expected at least {MIN_TOKEN_CHARS} characters without spaces, such as the output "
                              "of `openssl rand -hex 16`")
        rate = rate_limit_from_environ(environ)
        return cls(token=token, rate_limit_per_user=rate.limit, rate_limit_period_s=rate.period_s)
