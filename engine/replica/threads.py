"""NUM_THREADS=auto inside a replica: its share of the CPUs, by how many replicas generate at the moment."""

from __future__ import annotations

from typing import Any

from engine.config import EngineSettings


class ThreadShare:
    """This replica's share of the CPUs, from an integer the engine keeps (replicas generating now) and shares
    with every replica. One replica alone uses every CPU; two busy replicas use half each. Checked before every
    decode, so a replica that starts or ends an answer changes the others' share within a token."""

    def __init__(self, backend: Any, settings: EngineSettings, busy: Any) -> None:
        self._set = getattr(backend, "set_threads", None) if settings.adaptive_threads and busy is not None else None
        self._busy, self._cpus, self.current = busy, settings.num_threads, settings.num_threads

    def update(self) -> None:
        if self._set is not None:
            threads = max(1, self._cpus // max(1, self._busy.value))
            if threads != self.current:
                self._set(threads)
                self.current = threads
