"""engbot's engine: a bounded job queue feeding a supervised pool of CPU model replicas."""

from engine.errors import EngineClosed, EngineError, QueueFull
from engine.types import Done, Event, Failed, GenParams, Job, Queued, Started, TextPiece, Turn

__all__ = [
    "Done",
    "EngineClosed",
    "EngineError",
    "Event",
    "Failed",
    "GenParams",
    "Job",
    "QueueFull",
    "Queued",
    "Started",
    "TextPiece",
    "Turn",
]
