"""The process-level settings shared by ``engbot run`` and ``engbot worker``: the HTTP endpoints and logging."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from engine.config import LOG_FORMATS, Env


@dataclass(frozen=True, slots=True)
class AppSettings:
    http_host: str
    http_port: int
    log_level: str
    log_format: str

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> AppSettings:
        env = Env(environ)
        return cls(
            http_host=env.str("HTTP_HOST", "0.0.0.0"),
            http_port=env.int("HTTP_PORT", 8080, lo=0, hi=65535),
            log_level=env.choice("LOG_LEVEL", "info", ("debug", "info", "warning", "error")),
            log_format=env.choice("LOG_FORMAT", "text", LOG_FORMATS),
        )
