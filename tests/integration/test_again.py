"""Jobs that answer a question again, on the real model: Continue (the model goes on from its cut answer) and
Regenerate (another answer than the greedy one)."""

from __future__ import annotations

from engine.types import Done, GenParams, Job, Started, Turn
from tests.conftest import EngineFactory

QUESTION = "Explain in detail how a bicycle works."


async def test_continue_goes_on_from_the_answer_so_far(engine_factory: EngineFactory) -> None:
    engine = await engine_factory(MAX_NEW_TOKENS=16)
    cut = await engine.submit_nowait(Job.ask(QUESTION)).result()
    assert isinstance(cut, Done) and cut.finish_reason == "length" and cut.text
    events = [e async for e in engine.submit_nowait(Job(turns=(Turn("user", QUESTION),), prefill=cut.text))]
    started, more = events[0], events[-1]
    assert isinstance(started, Started) and isinstance(more, Done) and more.text.strip()
    assert started.prompt_tokens >= cut.prompt_tokens + cut.completion_tokens - 2  # the answer so far is read too
    assert not more.text.startswith(cut.text)  # only the new text comes back


async def test_regenerate_samples_another_answer_even_when_greedy_is_the_default(
        engine_factory: EngineFactory) -> None:
    engine = await engine_factory(TEMPERATURE=0, MAX_NEW_TOKENS=32)
    poem = Job.ask("Write a short poem about the rain.", params=None)
    greedy = [await engine.submit_nowait(Job(turns=poem.turns)).result() for _ in range(2)]
    assert isinstance(greedy[0], Done) and greedy[0].text == greedy[1].text  # greedy: the same answer again
    again = [await engine.submit_nowait(Job(turns=poem.turns, resample=True)).result() for _ in range(2)]
    texts = {r.text for r in again if isinstance(r, Done)}
    assert len(texts) == 2 and greedy[0].text not in texts  # REGENERATE_TEMPERATURE and a fresh seed each time


async def test_a_prefill_counts_toward_the_context(engine_factory: EngineFactory) -> None:
    engine = await engine_factory(CONTEXT_LENGTH=256, MAX_NEW_TOKENS=32)
    result = await engine.submit_nowait(Job(turns=(Turn("user", "Go on."),), prefill="word " * 400,
                                            params=GenParams(max_new_tokens=32))).result()
    assert not isinstance(result, Done) and result.kind == "prompt_too_long"
    assert "the answer so far" in result.reason
