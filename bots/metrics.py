"""The adapters' own metrics, in the process's one registry (the submitter's): ``/metrics`` serves them all."""

from __future__ import annotations

import weakref

from prometheus_client import CollectorRegistry, Counter

_FEEDBACK: weakref.WeakKeyDictionary[CollectorRegistry, Counter] = weakref.WeakKeyDictionary()


def feedback_counter(registry: CollectorRegistry) -> Counter:
    """``engbot_feedback_total{platform,value}``: presses of an answer's thumbs up (good) or down (bad)."""
    counter = _FEEDBACK.get(registry)
    if counter is None:
        counter = _FEEDBACK[registry] = Counter("engbot_feedback", "Answers rated by their readers",
                                                ["platform", "value"], registry=registry)
    return counter
