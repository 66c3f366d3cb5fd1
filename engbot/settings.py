"""The process-level settings (the HTTP endpoints, logging), the names of every setting, and the one validation of
all of them that ``engbot run`` and ``engbot doctor`` share: doctor fails for exactly what run refuses."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from bots.channels.lookup import ChannelSettings
from bots.registry import PLATFORMS, Platform
from bots.web import settings_from_environ as web_settings_from_environ
from bots.web.access import is_loopback
from bots.web.settings import WebSettings
from engine.config import LOG_FORMATS, EngineSettings, Env, QueueSettings
from engine.errors import ConfigError
from engine.models.fleet import FleetSettings

if TYPE_CHECKING:
    from engine.remote import RemoteSettings

LOG_LEVELS = ("debug", "info", "warning", "error")
DEFAULT_HTTP_HOST = "127.0.0.1"  # this machine only: the playground answers whoever reaches it

# Every setting engbot reads (.env.example documents each once; tests/unit/test_settings_names.py checks both
# ways), besides the platforms' own, which start with their prefix (bots/registry.py).
SETTING_NAMES = (
    "MODEL_PATH", "MODEL_BACKEND", "MODEL_TYPE", "LLM_LIB", "CONTEXT_LENGTH", "PROMPT_TEMPLATE", "SYSTEM_PROMPT",
    "KV_CACHE_TYPE", "FLASH_ATTN", "NUM_WORKERS", "NUM_THREADS", "PARALLEL_SLOTS", "KV_CACHE_TOKENS",
    "PREFILL_STEP_MS", "LOAD_ON_FLY", "KEEP_ALIVE_S", "QUEUE_MAX_SIZE", "QUEUE_TIMEOUT_S", "GENERATION_TIMEOUT_S",
    "SHUTDOWN_GRACE_S",
    "MAX_NEW_TOKENS", "TEMPERATURE", "TOP_P", "TOP_K", "REPEAT_PENALTY", "SEED", "REGENERATE_TEMPERATURE",
    "LOG_LEVEL", "LOG_FORMAT", "RATE_LIMIT_PER_USER", "RATE_LIMIT_PERIOD_S", "HTTP_HOST", "HTTP_PORT",
    "PLAYGROUND_TOKEN", "QUEUE_BACKEND", "REDIS_URL", "REDIS_MAX_PENDING", "REDIS_VISIBILITY_TIMEOUT_S",
    "JOB_DEADLINE_S", "REDIS_KEY_PREFIX", "MODELS", "DEFAULT_MODEL", "MAX_LOADED_MODELS", "OPENAI_BASE_URL",
    "OPENAI_API_KEY", "OPENAI_MODEL", "REMOTE_MAX_INFLIGHT", "REMOTE_RETRY_S", "REMOTE_CONTINUE",
    "ENGBOT_CONFIG", "STATE_PATH", "SHOW_THINKING", "THINKING_TAGS", "FILE_MAX_BYTES", "FILE_MAX_COUNT",
    "FILE_MAX_PDF_PAGES", "FILE_EXTRACT_TIMEOUT_S",
)
# Read when set, and shown commented out in .env.example: an empty value there would override the image's MODELS_DIR
# and Hugging Face's own defaults (HF_* are huggingface_hub's settings, which `engbot pull` passes on).
OPTIONAL_NAMES = ("MODELS_DIR", "HF_ENDPOINT", "HF_TOKEN", "HF_HUB_OFFLINE")
MODEL_PREFIX = "MODELS_"  # one model's own settings: MODELS_<NAME>_<SETTING> (engine/models/fleet.py)


def is_setting(name: str) -> bool:
    """Whether ``name`` is one of engbot's settings (a platform's by its prefix)."""
    return (name in SETTING_NAMES or name in OPTIONAL_NAMES or name.startswith(MODEL_PREFIX)
            or name.startswith(tuple(p.env_prefix for p in PLATFORMS)))


@dataclass(frozen=True, slots=True)
class LogSettings:
    level: str
    format: str

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> LogSettings:
        env = Env(environ)
        return cls(env.choice("LOG_LEVEL", "info", LOG_LEVELS), env.choice("LOG_FORMAT", "text", LOG_FORMATS))


@dataclass(frozen=True, slots=True)
class AppSettings:
    """Where ``engbot run`` and ``engbot worker`` serve their endpoints (and the playground), and how they log."""

    http_host: str
    http_port: int
    log_level: str
    log_format: str

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> AppSettings:
        env = Env(environ)
        host = env.raw("HTTP_HOST") or DEFAULT_HTTP_HOST
        if any(c.isspace() for c in host) or "/" in host:
            raise ConfigError("HTTP_HOST", host, "expected an address to listen on, such as 127.0.0.1 (this machine "
                              "only) or 0.0.0.0 (every interface)")
        logs = LogSettings.from_environ(environ)
        return cls(http_host=host, http_port=env.int("HTTP_PORT", 8080, lo=0, hi=65535), log_level=logs.level,
                   log_format=logs.format)

    @property
    def loopback(self) -> bool:
        """Listening on this machine only: nobody else can reach the endpoints (or the playground)."""
        return is_loopback(self.http_host)

    @property
    def local_url(self) -> str:
        """Where a browser on this machine finds the playground."""
        host = "127.0.0.1" if self.http_host in ("0.0.0.0", "") else "[::1]" if self.http_host == "::" else \
            f"[{self.http_host}]" if ":" in self.http_host else self.http_host
        return f"http://{host}:{self.http_port}/"


@dataclass(frozen=True)
class RunSettings:
    """Every setting of ``engbot run``, checked."""

    app: AppSettings
    queue: QueueSettings
    engine: EngineSettings
    web: WebSettings
    platforms: tuple[tuple[Platform, Any], ...] = field(default=())
    remote: RemoteSettings | None = None  # MODEL_BACKEND=openai, answered in this process
    fleet: FleetSettings | None = None  # MODELS, answered in this process
    channels: ChannelSettings = field(default_factory=ChannelSettings)  # ENGBOT_CONFIG, personas, files, thinking

    @property
    def playground_mode(self) -> bool:
        """No chat platform is configured: ``engbot run`` serves the web playground as its platform."""
        return not self.platforms


T = TypeVar("T")


def check_settings(environ: Mapping[str, str], *, check_model: bool = True
                   ) -> tuple[RunSettings | None, list[ConfigError]]:
    """Read and check every setting of ``engbot run``: the HTTP endpoints and logging, the queue, the engine (and
    the model file with ``check_model``, when this process loads it: not with QUEUE_BACKEND=redis), every
    configured platform (``bots/registry.py``) and the playground. Each part is checked even when another failed,
    so doctor can name every problem at once; the settings are None when any part failed."""
    errors: list[ConfigError] = []

    def attempt(read: Callable[[], T]) -> T | None:
        try:
            return read()
        except ConfigError as exc:
            errors.append(exc)
            return None

    app = attempt(lambda: AppSettings.from_environ(environ))
    queue = attempt(lambda: QueueSettings.from_environ(environ))
    local = queue is None or queue.backend == "memory"
    engine = attempt(lambda: EngineSettings.from_environ(environ, check_model=check_model and local))
    remote: RemoteSettings | None = None
    fleet: FleetSettings | None = None
    if local and engine is not None and engine.model_backend == "openai":
        from engine.remote import RemoteSettings

        remote = attempt(lambda: RemoteSettings.from_environ(environ))
    elif local:
        fleet = attempt(lambda: FleetSettings.from_environ(environ, check_model=check_model))
    platforms: list[tuple[Platform, Any]] = []
    for platform in PLATFORMS:
        settings = attempt(lambda platform=platform: platform.load().settings_from_environ(environ))  # type: ignore[misc]
        if settings is not None:
            platforms.append((platform, settings))
    web = attempt(lambda: web_settings_from_environ(environ))
    # the settings file (its file, line and key), STATE_PATH, FILE_*, SHOW_THINKING, THINKING_TAGS; the models a
    # channel may name are MODELS' (when they could be read: their errors are named once, above)
    models_read = fleet is not None or not (local and Env(environ).raw("MODELS"))
    channels = attempt(lambda: ChannelSettings.from_environ(environ, engine=engine, queue=queue, fleet=fleet)) \
        if engine is not None and queue is not None and models_read else None
    if errors or app is None or queue is None or engine is None or web is None or channels is None:
        return None, errors
    return RunSettings(app, queue, engine, web, tuple(platforms), remote, fleet, channels), []
