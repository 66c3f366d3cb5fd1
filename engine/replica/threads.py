"""NUM_THREADS=auto inside a replica: its share of the CPUs, by how many replicas generate at the moment and how
many CPUs other programs leave free."""

from __future__ import annotations

import multiprocessing as mp
from typing import Any

from engine.config import EngineSettings

_SPAWN = mp.get_context("spawn")


class CpuShare:
    """Two integers the engine writes and its replicas read without locking (shared memory, made before the
    replicas are spawned): how many replicas generate now, and how many CPUs are free for them (the CPUs this
    process may use, less what other programs keep busy: ``engine/local/cpuwatch.py``)."""

    def __init__(self, cpus: int) -> None:
        self._values: Any = _SPAWN.RawArray("i", [0, cpus])

    @property
    def busy(self) -> int:
        return int(self._values[0])

    @busy.setter
    def busy(self, value: int) -> None:
        self._values[0] = value

    @property
    def cpus(self) -> int:
        return int(self._values[1])

    @cpus.setter
    def cpus(self, value: int) -> None:
        self._values[1] = value


class ThreadShare:
    """This replica's share of the free CPUs among the replicas generating now. One replica alone uses every
    free CPU; two busy replicas use half each; a CPU another program keeps busy is left to it (a multi-threaded
    ggml step waits at every barrier for a thread the system took away). Checked before every decode, so a
    replica that starts or ends an answer changes the others' share within a token."""

    def __init__(self, backend: Any, settings: EngineSettings, share: CpuShare | None) -> None:
        self._set = getattr(backend, "set_threads", None) if settings.adaptive_threads and share is not None else None
        self._share, self.current = share, settings.num_threads

    def update(self) -> None:
        if self._set is not None and self._share is not None:
            threads = max(1, self._share.cpus // max(1, self._share.busy))
            if threads != self.current:
                self._set(threads)
                self.current = threads
