"""What the README promises a newcomer, checked against the files it names (the quick start is CI's own command)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def quick_start() -> list[str]:
    section = README[README.index("## Quick start"):README.index("## Run with Docker")]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None
    return [line for line in block.group(1).splitlines() if line and not line.startswith("#")]


def test_the_quick_start_is_a_virtualenv_then_the_two_commands_ci_runs() -> None:
    lines = quick_start()
    assert lines[0] == "python3 -m venv .venv && . .venv/bin/activate"  # Debian 12 refuses pip outside one
    assert lines[1] == 'CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install . && engbot ask "What is the capital of France?"'
    assert lines[2] in (ROOT / ".ci" / "run").read_text().splitlines()  # word for word
    assert len(lines) == 3


def test_the_first_hour_notes_are_there() -> None:
    assert "http://127.0.0.1:8080/" in README and "docs/playground.png" in README
    assert (ROOT / "docs" / "playground.png").read_bytes()[:4] == b"\x89PNG"
    assert "--no-cache-dir --force-reinstall" in README  # pip's wheel cache ignores CMAKE_ARGS
    assert "BuildKit" in README and "DOCKER_BUILDKIT" in (ROOT / "docker" / "build.sh").read_text()
    assert "NUM_THREADS=1" in README and "busy with other programs" in README  # auto stalls then
    assert "5-10 minutes" in README and "10-25 min" in README  # ranges, not a best case
    docker = README[README.index("## Run with Docker"):README.index("## Commands")]
    assert "PLAYGROUND_TOKEN" in docker and "#token=" in docker  # how to open it from the host
    assert "chromium" in (ROOT / ".ci" / "run").read_text()
