"""The remote backend's settings (MODEL_BACKEND=openai): where the OpenAI-compatible server is and how hard to
lean on it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from engine.config import Env, mask
from engine.errors import ConfigError

CONTINUE_MODES = ("prefill", "ask")
DEFAULT_MAX_INFLIGHT = 4  # llama.cpp's llama-server has 4 slots by default; vLLM, TGI and Ollama take more: raise it
NO_KEY = "no-key"  # sent when OPENAI_API_KEY is empty: local servers without a key ignore it


@dataclass(frozen=True, slots=True)
class RemoteSettings:
    """OPENAI_BASE_URL (e.g. ``http://vllm:8000/v1``), OPENAI_API_KEY (masked everywhere), OPENAI_MODEL (empty: the
    server's only model), REMOTE_MAX_INFLIGHT (answers sent to the server at once; the rest wait in engbot's queue),
    REMOTE_RETRY_S (how long 429, 503 and an unreachable server are retried before the user is told),
    REMOTE_CONTINUE (how Continue asks for more: ``prefill`` the answer so far as the last assistant message, which
    llama.cpp's server, vLLM and Ollama continue; ``ask`` for servers that cannot continue a message)."""

    base_url: str
    api_key: str = field(default="", repr=False)
    model: str = ""
    max_inflight: int = DEFAULT_MAX_INFLIGHT
    retry_s: float = 30.0
    continue_mode: str = "prefill"
    connect_timeout_s: float = 10.0

    def __repr__(self) -> str:
        return (f"RemoteSettings(base_url={self.base_url_masked!r}, api_key={mask('OPENAI_API_KEY', self.api_key)!r}, "
                f"model={self.model!r}, max_inflight={self.max_inflight}, retry_s={self.retry_s:g}, "
                f"continue_mode={self.continue_mode!r})")

    @property
    def base_url_masked(self) -> str:
        return mask("OPENAI_BASE_URL", self.base_url)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> RemoteSettings:
        """Read and validate the settings; ``ConfigError`` naming the variable (the key and passwords masked)."""
        env = Env(environ)
        url = (env.raw("OPENAI_BASE_URL") or "").rstrip("/")
        if not url:
            raise ConfigError("OPENAI_BASE_URL", "", "not set: MODEL_BACKEND=openai needs the URL of an "
                              "OpenAI-compatible server, e.g. http://vllm:8000/v1 or http://127.0.0.1:8080/v1")
        parts = urlsplit(url)
        try:
            port_ok = parts.port is None or parts.port > 0
        except ValueError:
            port_ok = False
        if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
            raise ConfigError("OPENAI_BASE_URL", mask("OPENAI_BASE_URL", url),
                              "expected http(s)://host[:port][/path], e.g. http://vllm:8000/v1")
        return cls(
            base_url=url,
            api_key=env.raw("OPENAI_API_KEY") or "",
            model=env.raw("OPENAI_MODEL") or "",
            max_inflight=env.int("REMOTE_MAX_INFLIGHT", DEFAULT_MAX_INFLIGHT, lo=1, hi=4096),
            retry_s=env.float("REMOTE_RETRY_S", 30.0, lo=0.0, hi=3600.0),
            continue_mode=env.choice("REMOTE_CONTINUE", "prefill", CONTINUE_MODES),
        )
