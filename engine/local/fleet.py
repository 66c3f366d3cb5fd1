"""Several models in one process (MODELS): one ``Engine`` per model, each with its own replicas, slots and queue,
behind one ``Submitter``. A job goes to the engine of ``job.model`` (a channel's model), or of DEFAULT_MODEL.

    async with EngineFleet(FleetSettings.from_environ(env)) as fleet:
        handle = await fleet.submit(Job.ask("Write a binary search in Python", model="code"))

With MAX_LOADED_MODELS below the number of models, a model loads when a question asks for it; if that many are in
memory already, the least recently used model that is answering nothing is unloaded first (``eviction.plan_load``,
a pure policy) while the question waits in its model's line. Metrics are shared (the totals), plus gauges per
model (``engbot_model_*{model=...}``); ``health()`` reports every model.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Iterator
from dataclasses import replace
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from engine.api import Health, JobHandle
from engine.local.engine import Engine
from engine.local.eviction import ModelUse, plan_load
from engine.local.supervisor import CpuShare
from engine.metrics import EngineMetrics
from engine.models.fleet import FleetSettings
from engine.types import Job

log = logging.getLogger("engbot.engine")

NEVER_S = 10.0**9  # keep-alive of a model that stays until another needs its place


class EngineFleet:
    """See the module docstring. Implements ``engine.api.Submitter`` (and ``submit_nowait``, ``capacity``)."""

    def __init__(self, fleet: FleetSettings, metrics: EngineMetrics | None = None) -> None:
        self.fleet = fleet
        self.metrics = metrics or EngineMetrics()
        self.engines: dict[str, Engine] = {}
        cpu = CpuShare()  # NUM_THREADS=auto: the CPUs are shared among the busy replicas of every model
        for spec in fleet.models:
            settings = spec.settings
            if fleet.limited and not settings.load_on_fly:  # loaded on demand, kept until another needs the place
                settings = replace(settings, load_on_fly=True, keep_alive_s=NEVER_S)
            self.engines[spec.name] = Engine(settings, self.metrics, gate=self, cpu=cpu)
        self.settings = self.engines[fleet.default].settings  # the default model's (what callers read)
        self.metrics.track(lambda: sum(e.queued for e in self.engines.values()),
                           lambda: sum(e.busy_replicas for e in self.engines.values()))
        self.metrics.registry.register(_PerModel(self))
        self._last_used = dict.fromkeys(self.engines, 0.0)
        self._unknown: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"<EngineFleet {' '.join(f'{n}:{e.loaded}' for n, e in self.engines.items())}>"

    # ---- what it tells about itself ----

    @property
    def default(self) -> Engine:
        return self.engines[self.fleet.default]

    @property
    def accepting(self) -> bool:
        return self.default.accepting

    @property
    def queued(self) -> int:
        return sum(e.queued for e in self.engines.values())

    @property
    def running(self) -> int:
        return sum(e.running for e in self.engines.values())

    @property
    def capacity(self) -> int:
        """Answers at once, over the models that may be in memory together."""
        sizes = sorted((e.capacity for e in self.engines.values()), reverse=True)
        return sum(sizes[:self.fleet.max_loaded] if self.fleet.limited else sizes)

    @property
    def shutdown_grace_s(self) -> float:
        return self.default.shutdown_grace_s

    def health(self) -> Health:
        """Alive unless a model cannot run (as one engine); ready while taking jobs. ``detail.models``: each
        model's state, replicas, queue and error."""
        models: dict[str, object] = {}
        for name, engine in self.engines.items():
            h = engine.health()
            models[name] = {"state": engine.loaded, "default": name == self.fleet.default, "ok": h.ok,
                            "queued": engine.queued, "running": engine.running, **h.detail}
        each = [e.health() for e in self.engines.values()]
        return Health(ok=all(h.ok for h in each),
                      checks={"engine": self.accepting, "model": all(h.checks.get("model", True) for h in each)},
                      detail={"models": models, "max_loaded_models": self.fleet.max_loaded})

    def describe(self) -> str:
        parts = [f"{n}{'*' if n == self.fleet.default else ''} ({e.settings.model_path.name}, {e.settings.layout})"
                 for n, e in self.engines.items()]
        limit = f"; at most {self.fleet.max_loaded} in memory" if self.fleet.limited else ""
        return f"engine ready: {len(parts)} models: {', '.join(parts)}{limit}"

    # ---- starting, submitting, cancelling ----

    async def start(self) -> None:
        """Start every engine; load every model (or, with MAX_LOADED_MODELS, the default one). Raises
        ``ModelFileError`` if a model cannot be loaded."""
        try:
            for engine in self.engines.values():
                await engine.start()
            if self.fleet.limited:
                await self.default.load()
                self._last_used[self.fleet.default] = time.monotonic()
        except BaseException:
            await asyncio.gather(*(e.stop(0) for e in self.engines.values()))
            raise

    async def __aenter__(self) -> EngineFleet:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def engine_for(self, job: Job) -> tuple[str, Engine]:
        name = job.model if job.model in self.engines else self.fleet.default
        if job.model and job.model not in self.engines and job.model not in self._unknown:
            self._unknown.add(job.model)
            log.warning("no model named %r (MODELS has %s): the default model %s answers", job.model,
                        ", ".join(self.engines), self.fleet.default)
        return name, self.engines[name]

    def submit_nowait(self, job: Job) -> JobHandle:
        name, engine = self.engine_for(job)
        self._last_used[name] = time.monotonic()
        return engine.submit_nowait(job)

    async def submit(self, job: Job) -> JobHandle:
        return self.submit_nowait(job)

    def cancel(self, job_id: str) -> bool:
        return any(engine.cancel(job_id) for engine in self.engines.values())

    async def stop(self, grace_s: float | None = None) -> None:
        await asyncio.gather(*(e.stop(grace_s) for e in self.engines.values()))
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # ---- MAX_LOADED_MODELS (the engines' LoadGate) ----

    def _uses(self) -> list[ModelUse]:
        return [ModelUse(n, e.loaded, e.in_flight > 0, self._last_used[n]) for n, e in self.engines.items()]

    def may_load(self, engine: Engine) -> bool:
        """Asked by an engine about to load its model."""
        if not self.fleet.limited:
            return True
        name = next(n for n, e in self.engines.items() if e is engine)
        plan = plan_load(self._uses(), name, self.fleet.max_loaded)
        if plan.unload is not None:
            victim = self.engines[plan.unload]
            log.info("model %s unloads to make room for %s (MAX_LOADED_MODELS=%d)", plan.unload, name,
                     self.fleet.max_loaded)
            self._spawn(self._unload(victim), f"engbot-unload-{plan.unload}")
        return plan.load

    def released(self, engine: Engine) -> None:
        """An engine has nothing more to answer: a model waiting for a place may get this one's."""
        if self.fleet.limited:
            self._retry_waiting()

    async def _unload(self, engine: Engine) -> None:
        await engine.unload()
        self._retry_waiting()

    def _retry_waiting(self) -> None:
        """Models with questions waiting and no model in memory ask again, longest waiting first."""
        waiting = [e for e in self.engines.values() if e.queued and e.loaded == "unloaded" and e.accepting]
        for engine in sorted(waiting, key=lambda e: e.oldest_wait or 0.0):
            engine.dispatch()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class _PerModel(Collector):
    """``engbot_model_loaded``, ``engbot_model_queue_depth``, ``engbot_model_running`` and
    ``engbot_model_replicas_ready`` by ``model`` name (a setting, never a user's), read at scrape time."""

    def __init__(self, fleet: EngineFleet) -> None:
        self.fleet = fleet

    def collect(self) -> Iterator[GaugeMetricFamily]:
        loaded = GaugeMetricFamily("engbot_model_loaded", "1 while the model is in memory (or loading)",
                                   labels=["model"])
        queued = GaugeMetricFamily("engbot_model_queue_depth", "Jobs waiting for the model", labels=["model"])
        running = GaugeMetricFamily("engbot_model_running", "Jobs the model is answering", labels=["model"])
        ready = GaugeMetricFamily("engbot_model_replicas_ready", "Replicas of the model ready to answer",
                                  labels=["model"])
        for name, engine in self.fleet.engines.items():
            loaded.add_metric([name], 1.0 if engine.loaded == "loaded" else 0.0)
            queued.add_metric([name], engine.queued)
            running.add_metric([name], engine.running)
            ready.add_metric([name], engine.replica_states.get("ready", 0))
        yield from (loaded, queued, running, ready)
