"""Several models in one engine (MODELS): each job goes to its model's replicas; with MAX_LOADED_MODELS the least
recently used model that answers nothing makes room, never one that answers. The bundled model, and the same file
under a second name."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from bots.web.access import Access
from engbot.activity import Activity
from engbot.settings import check_settings
from engbot.status import StatusView
from engine.local.fleet import EngineFleet
from engine.models.fleet import FleetSettings
from engine.types import Done, GenParams, Job, Queued, Started

FleetFactory = Callable[..., Awaitable[EngineFleet]]
LONG = GenParams(max_new_tokens=48, temperature=0.0, ignore_eos=True)


@pytest.fixture
async def fleet_factory(model_path: Path, tmp_path: Path) -> AsyncIterator[FleetFactory]:
    second = tmp_path / "second-model.gguf"
    second.symlink_to(model_path)
    fleets: list[EngineFleet] = []

    async def start(**env: object) -> EngineFleet:
        environ = {"MODELS": f"fast={model_path},code={second}", "NUM_WORKERS": "1", "NUM_THREADS": "1",
                   "PARALLEL_SLOTS": "2", "TEMPERATURE": "0", "MAX_NEW_TOKENS": "8",
                   **{k: str(v) for k, v in env.items()}}
        settings = FleetSettings.from_environ(environ)
        assert settings is not None
        fleet = EngineFleet(settings)
        fleets.append(fleet)
        await fleet.start()
        return fleet

    yield start
    for fleet in fleets:
        await fleet.stop(grace_s=0)


def gauge(fleet: EngineFleet, name: str, model: str) -> float:
    text = generate_latest(fleet.metrics.registry).decode()
    line = next(x for x in text.splitlines() if x.startswith(f'{name}{{model="{model}"}}'))
    return float(line.split()[-1])


async def test_each_job_goes_to_its_models_replicas(fleet_factory: FleetFactory) -> None:
    fleet = await fleet_factory(MODELS_CODE_PARALLEL_SLOTS=1, MODELS_CODE_SYSTEM_PROMPT="You write code.")
    assert {n: e.loaded for n, e in fleet.engines.items()} == {"fast": "loaded", "code": "loaded"}  # no limit
    assert fleet.engines["code"].settings.parallel_slots == 1 and fleet.engines["fast"].settings.parallel_slots == 2
    assert fleet.capacity == 3
    code = await fleet.submit(Job.ask("Write hello world in Python.", model="code"))
    fast = await fleet.submit(Job.ask("What is the capital of France?", model="fast"))
    default = await fleet.submit(Job.ask("Name a colour.", model=None))
    unknown = await fleet.submit(Job.ask("Name a fruit.", model="no-such-model"))  # the default answers it
    assert (fleet.engines["code"].in_flight, fleet.engines["fast"].in_flight) == (1, 3)
    for handle in (code, fast, default, unknown):
        assert isinstance(await handle.result(), Done)
    health = fleet.health()
    models = health.detail["models"]
    assert health.ok and isinstance(models, dict) and set(models) == {"fast", "code"}
    assert models["fast"]["default"] and models["code"]["state"] == "loaded"
    assert gauge(fleet, "engbot_model_loaded", "code") == 1.0
    assert gauge(fleet, "engbot_model_replicas_ready", "fast") == 1.0
    assert "engbot_requests_total" in generate_latest(fleet.metrics.registry).decode()  # the totals, shared


async def test_the_least_recently_used_idle_model_makes_room(fleet_factory: FleetFactory) -> None:
    fleet = await fleet_factory(MAX_LOADED_MODELS=1)
    assert {n: e.loaded for n, e in fleet.engines.items()} == {"fast": "loaded", "code": "unloaded"}
    assert gauge(fleet, "engbot_model_loaded", "code") == 0.0
    result = await (await fleet.submit(Job.ask("Write hello world in Python.", model="code"))).result()
    assert isinstance(result, Done)
    assert {n: e.loaded for n, e in fleet.engines.items()} == {"fast": "unloaded", "code": "loaded"}
    assert isinstance(await (await fleet.submit(Job.ask("Hi", model="fast"))).result(), Done)
    assert {n: e.loaded for n, e in fleet.engines.items()} == {"fast": "loaded", "code": "unloaded"}


async def test_a_model_that_answers_is_not_unloaded_the_other_waits(fleet_factory: FleetFactory) -> None:
    fleet = await fleet_factory(MAX_LOADED_MODELS=1)
    running = await fleet.submit(Job.ask("Tell me a long story about a lighthouse.", model="fast", params=LONG))
    first = await running.next(timeout=60)
    assert isinstance(first, Started)
    waiting = await fleet.submit(Job.ask("Write hello world in Python.", model="code"))
    queued = await waiting.next(timeout=5)
    assert isinstance(queued, Queued) and queued.position == 1
    assert fleet.engines["fast"].loaded == "loaded" and fleet.engines["code"].loaded == "unloaded"
    done = await running.result()
    assert isinstance(done, Done) and done.completion_tokens == LONG.max_new_tokens  # never cut by an unload
    assert isinstance(await waiting.result(), Done)
    assert fleet.engines["code"].loaded == "loaded" and fleet.engines["fast"].loaded == "unloaded"
    assert fleet.health().ok


async def test_the_status_page_reports_every_model(fleet_factory: FleetFactory, model_path: Path) -> None:
    fleet = await fleet_factory(MAX_LOADED_MODELS=1, QUEUE_MAX_SIZE=5)
    environ = {"MODELS": f"fast={model_path},code={model_path}", "MAX_LOADED_MODELS": "1", "QUEUE_MAX_SIZE": "5"}
    settings, errors = check_settings(environ, check_model=False)
    assert settings is not None, errors
    report = StatusView(Activity(fleet), settings, environ, Access(None, True)).report()
    assert "2 models" in report["model"]["where"] and "at most 1 in memory" in report["model"]["where"]
    assert report["queue"]["max"] == 5  # this process's queue, not Redis's bound
    assert report["health"]["models"]["code"]["state"] == "unloaded"
    assert ("MODELS", f"fast={model_path},code={model_path}") in report["settings"]
