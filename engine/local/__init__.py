"""The in-process engine: a bounded queue and a dispatcher feeding supervised replica processes."""

from engine.local.engine import Engine

__all__ = ["Engine"]
