"""Prometheus metrics of one engine. All are kept in the parent process, so replicas need no collection."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class EngineMetrics:
    """The metrics named in docs/architecture.md, in a registry of their own (one per engine)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.queue_wait = Histogram("engbot_queue_wait_seconds", "Time a job waited for a free replica",
                                    buckets=_LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("engbot_time_to_first_token_seconds", "Time from submit to the first text",
                              buckets=_LATENCY_BUCKETS, registry=r)
        self.duration = Histogram("engbot_request_duration_seconds", "Time from submit to the final event",
                                  buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("engbot_queue_depth", "Jobs waiting for a replica", registry=r)
        self.replicas_busy = Gauge("engbot_replicas_busy", "Replicas generating right now", registry=r)
        # the old name of engbot_replicas_busy, kept for one release (a "worker" is an `engbot worker` host now)
        self.workers_busy = Gauge("engbot_workers_busy", "Deprecated: engbot_replicas_busy", registry=r)
        self.requests = Counter("engbot_requests", "Finished jobs by platform and outcome",
                                ["platform", "outcome"], registry=r)
        self.tokens = Counter("engbot_generated_tokens", "Tokens generated", registry=r)
        self.restarts = Counter("engbot_replica_restarts", "Replica processes restarted after dying", registry=r)
        # the old name of engbot_replica_restarts_total, kept for one release
        self.worker_restarts = Counter("engbot_worker_restarts", "Deprecated: engbot_replica_restarts_total",
                                       registry=r)

    def track(self, queue_depth: Callable[[], int], replicas_busy: Callable[[], int]) -> None:
        """Read the gauges from the engine at scrape time."""
        self.queue_depth.set_function(queue_depth)
        self.replicas_busy.set_function(replicas_busy)
        self.workers_busy.set_function(replicas_busy)

    def replica_died(self) -> None:
        self.restarts.inc()
        self.worker_restarts.inc()
