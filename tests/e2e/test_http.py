"""Health, readiness and metrics endpoints over real HTTP on 127.0.0.1."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from aiohttp.test_utils import TestClient, TestServer

from engbot.http import make_app
from engine.errors import QueueFull
from engine.types import Done, GenParams, Job
from tests.conftest import EngineFactory


@dataclass
class FakeAdapter:
    name: str
    connected: bool


async def test_endpoints_report_state_and_metrics(engine_factory: EngineFactory) -> None:
    engine = await engine_factory(QUEUE_MAX_SIZE=1)
    adapter = FakeAdapter("slack", connected=False)
    async with TestClient(TestServer(make_app(engine, lambda: [adapter]), host="127.0.0.1")) as client:
        assert (await client.get("/healthz")).status == 200
        resp = await client.get("/readyz")
        body = await resp.json()
        assert resp.status == 503 and body["checks"] == {"engine": True, "model": True, "slack": False}
        adapter.connected = True
        assert (await client.get("/readyz")).status == 200

        params = GenParams(max_new_tokens=8, temperature=0.0)
        tokens = 0
        for _ in range(2):
            done = await engine.submit_nowait(Job.ask("Hi", params=params, platform="slack")).result()
            assert isinstance(done, Done)
            tokens += done.completion_tokens
        long = engine.submit_nowait(Job.ask("Tell me a long story.",
                                            params=GenParams(max_new_tokens=400, ignore_eos=True),
                                            platform="slack"))
        engine.submit_nowait(Job.ask("Hi", params=params, platform="slack"))
        with pytest.raises(QueueFull):
            engine.submit_nowait(Job.ask("Hi", params=params, platform="discord"))
        metrics = await (await client.get("/metrics")).text()
        long.cancel()
        await long.result()
    assert 'engbot_requests_total{outcome="ok",platform="slack"} 2.0' in metrics
    assert 'engbot_requests_total{outcome="busy",platform="discord"} 1.0' in metrics
    assert "engbot_queue_depth 1.0" in metrics
    assert f"engbot_generated_tokens_total {float(tokens)}" in metrics
    assert "engbot_time_to_first_token_seconds_count 2.0" in metrics
    assert "engbot_worker_restarts_total 0.0" in metrics  # the old name, kept for one release
    assert "engbot_replica_restarts_total 0.0" in metrics
    assert "engbot_replicas_busy 1.0" in metrics and "engbot_workers_busy 1.0" in metrics  # (the long answer)
    for name in ("engbot_queue_wait_seconds", "engbot_request_duration_seconds"):
        assert name in metrics
