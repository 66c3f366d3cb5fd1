"""Model references, the choice of a file in a repository, and MODEL_PATH by name (engine/models/): pure, or on
small files in a temporary MODELS_DIR."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import EngineSettings, models_dir
from engine.errors import ConfigError
from engine.models.refs import ModelRef, RefError, RemoteFile, choose, models_in, parse_ref, quant_of, short_name
from engine.models.store import ModelNotFound, ModelStore, resolve_model

QWEN = "Qwen/Qwen2.5-0.5B-Instruct-GGUF"


@pytest.mark.parametrize(("text", "ref"), [
    (f"{QWEN}:q4_k_m", ModelRef(QWEN, "q4_k_m")),
    (QWEN, ModelRef(QWEN, "")),
    (f"hf.co/{QWEN}:Q4_K_M", ModelRef(QWEN, "Q4_K_M")),  # Ollama's spelling
    (f"https://huggingface.co/{QWEN}", ModelRef(QWEN, "")),
    (f"https://huggingface.co/{QWEN}/blob/main/qwen2.5-0.5b-instruct-q8_0.gguf",
     ModelRef(QWEN, "qwen2.5-0.5b-instruct-q8_0.gguf")),
    (f"  {QWEN}:sub/dir/model.gguf ", ModelRef(QWEN, "sub/dir/model.gguf")),
])
def test_references(text: str, ref: ModelRef) -> None:
    assert parse_ref(text) == ref
    assert str(ref) == (f"{ref.repo}:{ref.selector}" if ref.selector else ref.repo)


@pytest.mark.parametrize("text", ["qwen", "a/b/c", "", "-x/y", "x/y.", "a/../b", "Qwen 2/x"])
def test_bad_references(text: str) -> None:
    with pytest.raises(RefError, match="not a model reference"):
        parse_ref(text)


@pytest.mark.parametrize(("name", "quant"), [
    ("qwen2.5-0.5b-instruct-q4_k_m.gguf", "Q4_K_M"), ("Llama-3.2-1B-Instruct-IQ4_XS.gguf", "IQ4_XS"),
    ("SmolLM2-135M-Instruct.Q4_1.gguf", "Q4_1"), ("model-f16.gguf", "F16"), ("gemma-3-4b-it-BF16.gguf", "BF16"),
    ("Qwen3-8B-UD-Q4_K_XL.gguf", "Q4_K_XL"), ("big-Q8_0-00001-of-00003.gguf", "Q8_0"), ("ggml-model.gguf", ""),
])
def test_quantization_from_the_file_name(name: str, quant: str) -> None:
    assert quant_of(name) == quant


def test_short_names() -> None:
    assert short_name("Qwen2.5-0.5B-Instruct-Q4_K_M.gguf") == "qwen2.5-0.5b-instruct-q4_k_m"
    assert short_name("big-Q8_0-00001-of-00003.gguf") == "big-q8_0"


def files(*paths: str) -> list[RemoteFile]:
    return [RemoteFile(p, size=(i + 1) << 20, sha256=f"{i:064x}") for i, p in enumerate(paths)]


REPO_FILES = files("README.md", "config.json", "qwen-q2_k.gguf", "qwen-q4_k_m.gguf", "qwen-q8_0.gguf",
                   "mmproj-qwen-f16.gguf", "big/qwen-f16-00002-of-00002.gguf", "big/qwen-f16-00001-of-00002.gguf")


def test_a_quantization_picks_its_file_and_split_models_come_whole() -> None:
    assert [m.first.path for m in models_in(REPO_FILES)] == [
        "big/qwen-f16-00001-of-00002.gguf", "qwen-q2_k.gguf", "qwen-q4_k_m.gguf", "qwen-q8_0.gguf"]  # no mmproj
    assert choose(QWEN, REPO_FILES, "Q8_0").first.path == "qwen-q8_0.gguf"
    split = choose(QWEN, REPO_FILES, "f16")
    assert [f.path for f in split.files] == ["big/qwen-f16-00001-of-00002.gguf", "big/qwen-f16-00002-of-00002.gguf"]
    assert split.size == (7 << 20) + (8 << 20)
    assert choose(QWEN, REPO_FILES, "").first.path == "qwen-q4_k_m.gguf"  # none named: Q4_K_M, as Ollama
    assert choose(QWEN, REPO_FILES, "qwen-q2_k.gguf").quant == "Q2_K"  # a file name
    assert choose(QWEN, files("only.gguf"), "").first.path == "only.gguf"
    incomplete = files("x-q4_0-00001-of-00002.gguf")
    with pytest.raises(RefError, match="holds no GGUF model file"):
        choose(QWEN, incomplete, "")


def test_what_a_reference_cannot_find_is_said_with_the_list() -> None:
    with pytest.raises(RefError) as info:
        choose(QWEN, REPO_FILES, "q5_k_m")
    message = str(info.value)
    assert "no model quantized as 'q5_k_m'" in message
    assert "qwen-q8_0.gguf  Q8_0  5.0 MiB" in message and "(+1 more parts)" in message
    assert "README.md" not in message and "mmproj" not in message
    with pytest.raises(RefError, match=r"no file 'nope\.gguf'"):
        choose(QWEN, REPO_FILES, "nope.gguf")
    with pytest.raises(RefError, match=r"holds 2 models: name one, e.g. Qwen/Qwen2.5-0.5B-Instruct-GGUF:q2_k"):
        choose(QWEN, files("qwen-q2_k.gguf", "qwen-q8_0.gguf"), "")
    with pytest.raises(RefError, match="2 models quantized as 'q4_0': name the file"):
        choose(QWEN, files("a-q4_0.gguf", "b-q4_0.gguf"), "q4_0")


def pulled(store: ModelStore, repo: str, file: str, ref: str) -> Path:
    path = store.model_path(repo, file)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"GGUF")
    store.write_meta(store.meta_path(repo, file), {"ref": ref, "repo": repo, "file": file})
    return path


def test_model_path_names_a_pulled_model(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    qwen = pulled(store, QWEN, "qwen2.5-0.5b-instruct-q4_k_m.gguf", f"{QWEN}:q4_k_m")
    qwen8 = pulled(store, QWEN, "qwen2.5-0.5b-instruct-q8_0.gguf", f"{QWEN}:q8_0")
    other = pulled(store, "bartowski/Llama-3.2-1B-Instruct-GGUF", "Llama-3.2-1B-Instruct-Q4_K_M.gguf", "b:q4_k_m")
    (tmp_path / "mine.gguf").write_bytes(b"GGUF")
    for name, path in [("qwen2.5-0.5b-instruct-q4_k_m", qwen), ("QWEN2.5-0.5B-Instruct-Q4_K_M", qwen),
                       (f"{QWEN}:q8_0", qwen8), (f"hf.co/{QWEN}:Q4_K_M", qwen), ("llama-3.2-1b-instruct-q4_k_m", other),
                       ("qwen2.5-0.5b-instruct-q8_0.gguf", qwen8), ("mine", tmp_path / "mine.gguf"),
                       ("mine.gguf", tmp_path / "mine.gguf"), (str(other), other)]:
        assert resolve_model(name, tmp_path) == path.resolve(), name
    with pytest.raises(ModelNotFound, match="names 2 models"):
        resolve_model(QWEN, tmp_path)
    with pytest.raises(ModelNotFound, match="is neither a file nor a model in MODELS_DIR"):
        resolve_model("mistral", tmp_path)
    assert resolve_model("./missing.gguf", tmp_path) == (Path.cwd() / "missing.gguf").resolve()  # a path stays one
    # and EngineSettings names the variable
    with pytest.raises(ConfigError) as info:
        EngineSettings.from_environ({"MODEL_PATH": "mistral", "MODELS_DIR": str(tmp_path)})
    assert info.value.name == "MODEL_PATH" and "engbot models" in str(info.value)


def test_models_dir_defaults_to_the_users_data_directory(tmp_path: Path) -> None:
    assert models_dir({"XDG_DATA_HOME": str(tmp_path)}) == tmp_path / "engbot" / "models"
    assert models_dir({}) == Path.home() / ".local" / "share" / "engbot" / "models"
    assert models_dir({"MODELS_DIR": str(tmp_path / "m")}) == tmp_path / "m"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match=r"MODELS_DIR.*expected a directory"):
        models_dir({"MODELS_DIR": str(tmp_path / "file")})


def test_the_store_lists_pulled_models_and_unfinished_downloads(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    pulled(store, QWEN, "qwen2.5-0.5b-instruct-q4_k_m.gguf", f"{QWEN}:q4_k_m")
    for part in (1, 2):
        pulled(store, QWEN, f"big/qwen-f16-0000{part}-of-00002.gguf", f"{QWEN}:f16")
    partial = store.partial_path(QWEN, "qwen2.5-0.5b-instruct-q8_0.gguf")
    partial.write_bytes(b"\0" * 10)
    store.write_meta(partial.with_name(partial.name + ".json"), {"ref": f"{QWEN}:q8_0", "size": 40})
    listed = store.models(inspect=False)
    assert [(m.name, m.ref, m.parts, m.size) for m in listed] == [
        ("qwen-f16", f"{QWEN}:f16", 2, 8), ("qwen2.5-0.5b-instruct-q4_k_m", f"{QWEN}:q4_k_m", 1, 4)]
    assert [(p.ref, p.size, p.total) for p in store.partials()] == [(f"{QWEN}:q8_0", 10, 40)]
    assert ModelStore(tmp_path / "absent").models() == []
