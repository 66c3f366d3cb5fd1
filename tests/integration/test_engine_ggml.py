"""The engine on a legacy GGML file (the original deployment's format) through ctransformers, end to end."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import EngineSettings
from engine.errors import ConfigError
from engine.types import Done, GenParams, Job, Started, Turn
from testkit.ggml import write_gpt_neox_ggml
from tests.conftest import EngineFactory


@pytest.fixture(scope="module")
def q5_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_gpt_neox_ggml(tmp_path_factory.mktemp("ggml") / "pythia-q5_0.bin", ftype="q5_0")


def test_settings_detect_backend_type_and_template(q5_file: Path) -> None:
    s = EngineSettings.from_environ({"MODEL_PATH": str(q5_file)})
    assert (s.model_backend, s.model_type, s.parallel_slots) == ("ctransformers", "gpt_neox", 1)
    with pytest.raises(ConfigError, match="PARALLEL_SLOTS"):
        EngineSettings.from_environ({"MODEL_PATH": str(q5_file), "PARALLEL_SLOTS": "2"})
    with pytest.raises(ConfigError, match="MODEL_BACKEND"):
        EngineSettings.from_environ({"MODEL_PATH": str(q5_file), "MODEL_BACKEND": "llama_cpp"})


@pytest.mark.parametrize("lib", ["auto", "basic"])
async def test_q5_0_gpt_neox_answers_through_the_engine(engine_factory: EngineFactory, q5_file: Path,
                                                          lib: str) -> None:
    engine = await engine_factory(MODEL_PATH=q5_file, LLM_LIB=lib, CONTEXT_LENGTH=512)
    assert engine.model_info is not None and engine.model_info.backend == "ctransformers"
    assert "template=oasst" in engine.model_info.detail
    params = GenParams(max_new_tokens=20, temperature=0.0)
    conversation = (Turn("user", "Hi"), Turn("assistant", "Hello"), Turn("user", "What is the capital of France?"))
    events = [e async for e in engine.submit_nowait(Job(turns=conversation, params=params))]
    started, done = events[0], events[-1]
    assert isinstance(started, Started) and started.prompt_tokens > 5 and started.dropped_turns == 0
    assert isinstance(done, Done) and done.completion_tokens == 20 and done.finish_reason == "length"
    again = await engine.submit_nowait(Job(turns=conversation, params=params)).result()
    assert isinstance(again, Done) and again.text == done.text  # greedy is deterministic
