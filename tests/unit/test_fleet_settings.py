"""MODELS, DEFAULT_MODEL, MAX_LOADED_MODELS and each model's own settings (MODELS_<NAME>_<SETTING>)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import default_model_path
from engine.errors import ConfigError
from engine.models.fleet import FleetSettings, env_prefix, model_environ, parse_models


@pytest.fixture
def bundled() -> Path:
    path = default_model_path()
    assert path is not None
    return path


def test_no_models_setting_means_one_model() -> None:
    assert FleetSettings.from_environ({}) is None


def test_models_with_a_default_a_limit_and_their_own_settings(bundled: Path, tmp_path: Path) -> None:
    other = tmp_path / "second.gguf"
    other.symlink_to(bundled)
    fleet = FleetSettings.from_environ({
        "MODELS": f"fast={bundled}, Code={other}", "DEFAULT_MODEL": "code", "MAX_LOADED_MODELS": "1",
        "NUM_WORKERS": "2", "PARALLEL_SLOTS": "8", "MODELS_CODE_NUM_WORKERS": "1", "MODELS_CODE_PARALLEL_SLOTS": "2",
        "MODELS_CODE_SYSTEM_PROMPT": "You write code."})
    assert fleet is not None and fleet.names == ("fast", "code") and fleet.default == "code" and fleet.limited
    fast, code = (m.settings for m in fleet.models)
    assert (fast.model_path, fast.num_workers, fast.parallel_slots) == (bundled, 2, 8)
    assert (code.model_path, code.num_workers, code.parallel_slots) == (other.resolve(), 1, 2)
    assert code.system_prompt == "You write code." and fast.system_prompt != code.system_prompt


def test_the_default_is_the_first_model_and_no_limit_loads_all(bundled: Path) -> None:
    fleet = FleetSettings.from_environ({"MODELS": f"a={bundled},b={bundled}"})
    assert fleet is not None and fleet.default == "a" and not fleet.limited
    assert not FleetSettings.from_environ({"MODELS": f"a={bundled}", "MAX_LOADED_MODELS": "1"}).limited  # type: ignore[union-attr]


@pytest.mark.parametrize(("raw", "words"), [
    ("fast", "has no model"), ("fast=", "has no model"), ("Fast Model=x", "is not a model name"),
    ("a=x,a=y", "given twice"), (" , ", "names no model"),
])
def test_a_bad_models_list_is_refused_naming_models(raw: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_models(raw)
    assert caught.value.name == "MODELS" and words in str(caught.value)


def test_bad_settings_name_the_variable_that_holds_them(bundled: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        FleetSettings.from_environ({"MODELS": f"a={bundled}", "DEFAULT_MODEL": "b"})
    assert caught.value.name == "DEFAULT_MODEL" and "a" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        FleetSettings.from_environ({"MODELS": f"a={bundled}", "MODEL_PATH": str(bundled)})
    assert caught.value.name == "MODEL_PATH" and "not both" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        FleetSettings.from_environ({"MODELS": f"a={bundled},b=never-pulled-model"})
    assert caught.value.name == "MODELS" and "b=never-pulled-model" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        FleetSettings.from_environ({"MODELS": f"my-model={bundled}", "MODELS_MY_MODEL_NUM_WORKERS": "0"})
    assert caught.value.name == "MODELS_MY_MODEL_NUM_WORKERS"
    with pytest.raises(ConfigError) as caught:
        FleetSettings.from_environ({"MODELS": f"a={bundled}", "MAX_LOADED_MODELS": "-1"})
    assert caught.value.name == "MAX_LOADED_MODELS"


def test_a_model_reads_the_global_settings_under_its_own() -> None:
    assert env_prefix("my-model") == "MODELS_MY_MODEL_"
    env = model_environ({"MODELS": "x", "NUM_WORKERS": "2", "MODELS_A_NUM_WORKERS": "1", "MODELS_B_NUM_WORKERS": "3"},
                        "a", "/m.gguf")
    assert env["MODEL_PATH"] == "/m.gguf" and env["NUM_WORKERS"] == "1" and "MODELS" not in env


def test_the_bundled_model_goes_by_its_short_name(bundled: Path) -> None:
    fleet = FleetSettings.from_environ({"MODELS": "fast=smollm2-135m-instruct.q4_1"})
    assert fleet is not None and fleet.models[0].settings.model_path == bundled
