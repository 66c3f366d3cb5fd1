"""The policy that picks which model makes room for another (MAX_LOADED_MODELS): no models, no processes."""

from __future__ import annotations

from engine.local.eviction import LoadPlan, ModelUse, plan_load


def use(name: str, state: str = "unloaded", busy: bool = False, last: float = 0.0) -> ModelUse:
    return ModelUse(name, state, busy, last)  # type: ignore[arg-type]


def test_a_model_in_memory_or_under_the_limit_loads_at_once() -> None:
    assert plan_load([use("a", "loaded"), use("b")], "a", 1) == LoadPlan(load=True)
    assert plan_load([use("a", "loaded"), use("b"), use("c")], "b", 2) == LoadPlan(load=True)
    assert plan_load([use("a", "loaded", busy=True), use("b")], "b", 0) == LoadPlan(load=True)  # 0: no limit


def test_the_least_recently_used_idle_model_makes_room() -> None:
    models = [use("a", "loaded", last=5.0), use("b", "loaded", last=1.0), use("c", "loaded", last=3.0), use("d")]
    assert plan_load(models, "d", 3) == LoadPlan(load=False, unload="b")


def test_a_model_that_answers_is_never_unloaded() -> None:
    models = [use("a", "loaded", busy=True, last=1.0), use("b", "loaded", last=9.0), use("c")]
    assert plan_load(models, "c", 2) == LoadPlan(load=False, unload="b")  # not a, though used longer ago
    assert plan_load([use("a", "loaded", busy=True), use("c")], "c", 1) == LoadPlan(load=False)  # it waits


def test_one_model_leaves_at_a_time_and_its_place_is_taken_by_one() -> None:
    leaving = [use("a", "unloading"), use("b", "loaded", last=0.0), use("c")]
    assert plan_load(leaving, "c", 2) == LoadPlan(load=False)  # a frees the place; b is not sent away as well
    assert plan_load([use("a"), use("b", "loaded"), use("c")], "c", 2) == LoadPlan(load=True)  # a is gone
    # two models waited for one place: the first to ask takes it, the second waits for that one to fall idle
    assert plan_load([use("a"), use("b", "loaded", busy=True), use("c")], "c", 1) == LoadPlan(load=False)


def test_the_engines_of_several_models_share_one_count_of_busy_replicas() -> None:
    from engine.local.supervisor import CpuShare

    share = CpuShare()
    fast, code = object(), object()
    share.report(fast, 2)
    share.report(code, 1)
    assert share.counter.value == 3  # NUM_THREADS=auto: 3 replicas share the CPUs, whatever their model
    share.report(fast, 0)
    assert share.counter.value == 1
