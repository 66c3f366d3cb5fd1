"""Every error the engine raises to its callers, in one place."""

from __future__ import annotations


class EngineError(Exception):
    """Base class of the engine's own errors."""


class QueueFull(EngineError):
    """The bounded queue holds QUEUE_MAX_SIZE jobs already: answer "busy" at once."""

    def __init__(self, max_size: int) -> None:
        super().__init__(f"the queue is full ({max_size} jobs waiting)")
        self.max_size = max_size


class DuplicateJob(EngineError):
    """A job with the same dedup key was submitted recently: the platform sent the event twice."""


class EngineClosed(EngineError):
    """The engine is shutting down (or not started) and takes no new jobs, or its queue (Redis) is unreachable."""


class QueueUnavailable(EngineError):
    """The shared job queue (Redis) cannot be reached at start. The message names REDIS_URL, password masked."""


class ModelServerUnavailable(EngineError):
    """The model server (MODEL_BACKEND=openai) cannot be reached at start. The message names OPENAI_BASE_URL."""


class ConfigError(EngineError):
    """A setting has a value that is not allowed. The message names the variable, the value and what is allowed."""

    def __init__(self, name: str, value: object, allowed: str) -> None:
        shown = value if not isinstance(value, str) or len(value) < 200 else value[:200] + "..."
        super().__init__(f"{name}={shown!r} is not valid: {allowed}")
        self.name = name
        self.value = value
        self.allowed = allowed


class ModelFileError(EngineError):
    """A model file is missing, unreadable, truncated or in a format no backend reads."""


class PromptTooLong(EngineError):
    """The newest message alone does not fit the model's context with room for the answer."""
