"""`engbot pull` and `engbot models` as a user runs them: a real process, huggingface_hub against the fake hub of
``testkit/fake_hub.py`` (HF_ENDPOINT) serving the bundled SmolLM2 GGUF file.

Disk full is tested two ways: with a file size limit (RLIMIT_FSIZE, which needs nothing but works only on the
process's own writes: Python then gets EFBIG) everywhere, and with a real small tmpfs (ENOSPC, and the free space
check before downloading) where the tests may mount one (root).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from testkit.fake_hub import GOOD_TOKEN, OTHER_TOKEN, FakeHub, HubFile

ROOT = Path(__file__).resolve().parents[2]
REPO = "Org/SmolLM2-135M-Instruct-GGUF"
FILE = "smollm2-135m-instruct-q4_1.gguf"
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def model_bytes(model_path: Path) -> bytes:
    return model_path.read_bytes()


@pytest.fixture
async def hub(model_bytes: bytes) -> AsyncIterator[FakeHub]:
    async with FakeHub() as fake:
        fake.add_repo(REPO, {FILE: model_bytes, "smollm2-135m-instruct-q8_0.gguf": model_bytes[:4096],
                             "README.md": HubFile(b"# SmolLM2 GGUF\n", lfs=False)})
        yield fake


class Run:
    """`engbot` in a process of its own, with HOME, MODELS_DIR and HF_ENDPOINT of the test."""

    def __init__(self, tmp: Path, hub: FakeHub) -> None:
        self.tmp, self.hub = tmp, hub
        self.models = tmp / "models"
        self.env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT), "HOME": str(tmp),
                    "MODELS_DIR": str(self.models), "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_TELEMETRY": "1"}

    async def start(self, *args: str, fsize: int | None = None, **env: str) -> asyncio.subprocess.Process:
        def limit() -> None:
            if fsize is not None:
                resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "engbot", *args, cwd=self.tmp, env={**self.env, **env},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, preexec_fn=limit)

    async def __call__(self, *args: str, fsize: int | None = None, **env: str) -> tuple[int, str, str]:
        proc = await self.start(*args, fsize=fsize, **env)
        out, err = await asyncio.wait_for(proc.communicate(), 240)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    def files(self) -> list[str]:
        """Everything in MODELS_DIR, metadata and partial downloads included."""
        if not self.models.exists():
            return []
        return sorted(str(p.relative_to(self.models)) for p in self.models.rglob("*") if p.is_file())

    def gguf_files(self) -> list[str]:
        return [f for f in self.files() if f.endswith(".gguf")]


@pytest.fixture
def engbot(tmp_path: Path, hub: FakeHub) -> Run:
    return Run(tmp_path, hub)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def percents(stderr: str, name: str) -> list[int]:
    """The percentages the progress bar of ``name`` showed, in order (tqdm redraws its line with \\r)."""
    return [int(m) for m in re.findall(rf"{re.escape(name)}:\s+(\d+)%", stderr)]


# ---- pulling ----


async def test_pull_shows_progress_verifies_and_the_model_answers_by_its_short_name(
        engbot: Run, hub: FakeHub, model_bytes: bytes) -> None:
    hub.rate = 40 << 20  # about 2.5 s: the bar is redrawn along the way
    code, _out, err = await engbot("pull", f"{REPO}:Q4_1")
    assert code == 0, err
    shown = percents(err, FILE)
    assert shown[-1] == 100 and any(0 < p < 100 for p in shown) and shown == sorted(shown), err
    assert "verifying sha256" in err and "MODEL_PATH=smollm2-135m-instruct-q4_1" in err
    model = engbot.models / REPO / FILE
    assert model.read_bytes() == model_bytes
    assert engbot.gguf_files() == [f"{REPO}/{FILE}"]  # only the chosen quantization, no partial file left
    # the hub's routes as huggingface_hub calls them: info with blobs, HEAD resolve, then the CDN, without the token
    seen = [(r.method, r.path.split("/")[1]) for r in hub.requests]
    assert seen == [("GET", "api"), ("HEAD", "Org"), ("GET", "cdn")]

    code, _out, err = await engbot("pull", f"{REPO}:q4_1")  # again: nothing to download
    assert code == 0 and "up to date" in err and len(hub.downloads()) == 1

    code, out, err = await engbot("ask", "What is the capital of France?", "--max-tokens", "8",
                                  MODEL_PATH="smollm2-135m-instruct-q4_1")
    assert code == 0 and out.strip(), err
    code, out, err = await engbot("ask", "Hi", "--max-tokens", "4", MODEL_PATH=f"{REPO}:q4_1")  # or as pulled
    assert code == 0 and out.strip(), err
    code, _out, err = await engbot("ask", "Hi", MODEL_PATH="qwen-never-pulled")
    assert code == 2 and "MODEL_PATH='qwen-never-pulled' is not valid" in err and "engbot pull" in err


async def test_a_cut_connection_is_resumed_where_it_broke_off(engbot: Run, hub: FakeHub) -> None:
    hub.cut_after = 30_000_000
    code, _out, err = await engbot("pull", f"{REPO}:q4_1")
    assert code == 0, err
    first, second = hub.downloads()
    assert first.range_start is None and second.range_start is not None and 0 < second.range_start <= 30_000_000
    assert "resume" in err.lower()
    assert sha256(engbot.models / REPO / FILE) == hashlib.sha256(hub.repos[REPO].files[FILE].data).hexdigest()


async def test_an_interrupted_pull_resumes_from_its_partial_file(engbot: Run, hub: FakeHub,
                                                                 model_bytes: bytes) -> None:
    hub.rate = 20 << 20
    halfway = asyncio.Event()
    hub.on_sent = lambda sent: halfway.set() if sent >= 40_000_000 else None
    proc = await engbot.start("pull", f"{REPO}:q4_1")
    await asyncio.wait_for(halfway.wait(), 60)
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 130, err.decode()
    assert "resumes the download" in err.decode()
    partial = engbot.models / REPO / ".engbot" / f"{FILE}.partial"
    kept = partial.stat().st_size
    assert 0 < kept < len(model_bytes) and not engbot.gguf_files()  # a partial download is no model

    code, out, _ = await engbot("models")
    assert "unfinished downloads" in out and f"{REPO}:q4_1" in out

    hub.rate, hub.on_sent = None, None
    code, _out, err = await engbot("pull", f"{REPO}:q4_1")
    assert code == 0, err
    assert f"resuming at {kept / 2**20:,.1f} MiB" in err
    assert hub.downloads()[-1].range_start == kept
    assert (engbot.models / REPO / FILE).read_bytes() == model_bytes
    assert not partial.exists() and not partial.with_name(partial.name + ".json").exists()


async def test_a_wrong_checksum_leaves_nothing_behind(engbot: Run, hub: FakeHub, model_bytes: bytes) -> None:
    hub.add_repo("Org/Broken-GGUF", {"broken-q4_1.gguf": HubFile(model_bytes, reported_sha256="ab" * 32)})
    code, _out, err = await engbot("pull", "Org/Broken-GGUF:q4_1")
    assert code == 1 and "checksum mismatch" in err and "removed" in err, err
    assert engbot.files() == []  # neither a model nor a partial file
    code, _out, err = await engbot("ask", "Hi", MODEL_PATH="broken-q4_1")
    assert code == 2


async def test_a_missing_file_is_refused_with_the_list_of_the_repository(engbot: Run, hub: FakeHub) -> None:
    code, _out, err = await engbot("pull", f"{REPO}:q5_k_m")
    assert code == 2, err
    assert f"{REPO} has no model quantized as 'q5_k_m'" in err
    assert FILE in err and "smollm2-135m-instruct-q8_0.gguf" in err and "93.8 MiB" in err
    assert "README.md" not in err  # models only
    code, _out, err = await engbot("pull", REPO)  # two quantizations, no Q4_K_M: which one?
    assert code == 2 and f"name one, e.g. {REPO}:q4_1" in err
    hub.add_repo("Org/SafeTensors", {"model.safetensors": b"\0" * 64, "config.json": HubFile(b"{}", lfs=False)})
    code, _out, err = await engbot("pull", "Org/SafeTensors")
    assert code == 2 and "holds no GGUF model file" in err and "model.safetensors" in err
    code, _out, err = await engbot("pull", "Org/NoSuchRepo:q4_k_m")
    assert code == 2 and "no model repository Org/NoSuchRepo" in err
    code, _out, err = await engbot("pull", "not a reference")
    assert code == 2 and "is not a model reference" in err
    assert engbot.files() == [] and hub.downloads() == []


async def test_a_gated_repository_says_so_and_takes_a_granted_token(engbot: Run, hub: FakeHub,
                                                                    model_bytes: bytes) -> None:
    hub.add_repo("Org/Gated-GGUF", {"gated-q4_1.gguf": model_bytes}, gated=True)
    code, _out, err = await engbot("pull", "Org/Gated-GGUF:q4_1")
    assert code == 2 and "is gated (401)" in err and "set HF_TOKEN" in err, err
    code, _out, err = await engbot("pull", "Org/Gated-GGUF:q4_1", HF_TOKEN=OTHER_TOKEN)
    assert code == 2 and "has not been granted access" in err and OTHER_TOKEN not in err, err
    assert engbot.files() == []
    code, out, err = await engbot("pull", "Org/Gated-GGUF:q4_1", HF_TOKEN=GOOD_TOKEN)
    assert code == 0, err
    head = [r for r in hub.requests if r.method == "HEAD"][-1]
    assert head.headers["Authorization"] == f"Bearer {GOOD_TOKEN}"
    assert "Authorization" not in hub.downloads()[-1].headers  # the CDN never sees the token
    assert GOOD_TOKEN not in err + out


async def test_offline_mode_uses_what_is_here_and_downloads_nothing(engbot: Run, hub: FakeHub) -> None:
    code, _out, err = await engbot("pull", f"{REPO}:q4_1", HF_HUB_OFFLINE="1")
    assert code == 2 and "offline mode" in err and hub.requests == []
    assert (await engbot("pull", f"{REPO}:q4_1"))[0] == 0
    before = len(hub.requests)
    code, _out, err = await engbot("pull", f"{REPO}:q4_1", HF_HUB_OFFLINE="1")
    assert code == 0 and "already here" in err and len(hub.requests) == before


async def test_a_file_size_limit_fails_cleanly(engbot: Run, hub: FakeHub) -> None:
    # RLIMIT_FSIZE: writes past 40 MiB fail with EFBIG (Python ignores SIGXFSZ), as a full disk fails with ENOSPC
    code, _out, err = await engbot("pull", f"{REPO}:q4_1", fsize=40 << 20)
    assert code == 1 and "disk is full" in err and "ulimit -f" in err and "partial download was removed" in err, err
    assert engbot.files() == []


@contextlib.contextmanager
def tmpfs(path: Path, size_mib: int) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(path)],
                             capture_output=True, check=False)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


async def test_a_full_disk_fails_cleanly_before_and_during_the_download(engbot: Run, hub: FakeHub) -> None:
    with tmpfs(engbot.models, 64):  # smaller than the model: refused before a byte is downloaded
        code, _out, err = await engbot("pull", f"{REPO}:q4_1")
        assert code == 1 and "not enough space" in err and "needs 93.8 MiB" in err, err
        assert engbot.files() == [] and hub.downloads() == []
    with tmpfs(engbot.models, 160):  # room at first; then something else fills the disk
        filler = engbot.models / "filler"

        def fill(sent: int) -> None:
            if sent >= 20_000_000 and not filler.exists():
                free = shutil.disk_usage(engbot.models).free
                filler.write_bytes(b"\0" * (free - (1 << 20)))
        hub.on_sent = fill
        code, _out, err = await engbot("pull", f"{REPO}:q4_1")
        assert code == 1 and "no space left on the device" in err and "partial download was removed" in err, err
        assert engbot.files() == ["filler"]


# ---- listing ----


async def test_models_lists_names_sizes_architecture_context_quant_and_template(
        engbot: Run, hub: FakeHub, model_bytes: bytes) -> None:
    # the same model without its chat template (the key renamed, so the file stays a valid GGUF)
    plain = model_bytes.replace(b"tokenizer.chat_template", b"tokenizer.chat_templatX", 1)
    hub.add_repo("Org/Plain-GGUF", {"plain-Q4_1.gguf": plain})
    code, out, _ = await engbot("models")
    assert code == 0 and "no models pulled yet" in out
    for ref in (f"{REPO}:q4_1", "Org/Plain-GGUF"):
        assert (await engbot("pull", ref))[0] == 0
    (engbot.models / "by-hand.gguf").write_bytes(model_bytes)
    (engbot.models / "notes.gguf").write_text("not a model")
    code, out, _ = await engbot("models", MODEL_PATH="plain-q4_1")
    assert code == 0
    lines = {line.split()[1] if line.startswith("*") else line.split()[0]: line for line in out.splitlines()}
    pulled = lines["smollm2-135m-instruct-q4_1"].split()
    assert pulled[:8] == ["smollm2-135m-instruct-q4_1", "93.8", "MiB", "llama", "8192", "Q4_1", "in", "file"]
    assert pulled[8] == f"{REPO}:q4_1"
    plain_row = lines["plain-q4_1"].split()
    assert plain_row[0] == "*" and plain_row[7] == "none" and plain_row[8] == "Org/Plain-GGUF:q4_1"
    assert "by-hand.gguf (put there by hand)" in lines["by-hand"]
    assert "unreadable" in lines["notes"] and "neither a GGUF" in lines["notes"]
    assert "bundled" in lines["smollm2-135m-instruct.q4_1"]
