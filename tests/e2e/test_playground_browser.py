"""The playground in a real browser: headless Chromium (Debian's package) driven by Playwright, against the real
`engbot run` with no chat platform configured, as a newcomer meets it: ask, watch the text stream in, press Stop,
read the status; then a short answer with its buttons.

    ENGBOT_SCREENSHOT=docs/playground.png python -m pytest tests/e2e/test_playground_browser.py   # the docs' picture

Chromium comes from `apt-get install chromium` (.ci/run installs it), never from `playwright install`. Where it is
missing the test is skipped, except in CI (CI=true), where that is a failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bots.messages import Messages

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LONG_QUESTION = "Write a very long story about a dragon and a knight, with many chapters."


def need(ok: bool, why: str) -> None:
    if not ok:
        if os.environ.get("CI"):
            pytest.fail(f"{why}: CI must have it (.ci/run installs chromium; the test extra, Playwright)")
        pytest.skip(why)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def engbot_run(tmp_path: Path) -> Iterator[str]:
    """`engbot run` with no platform token: the playground, on 127.0.0.1. Its URL."""
    port = free_port()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT), "HOME": str(tmp_path),
           "HTTP_PORT": str(port), "NUM_WORKERS": "1", "NUM_THREADS": "1", "MAX_NEW_TOKENS": "1500",
           "SHUTDOWN_GRACE_S": "1", "LOG_LEVEL": "INFO"}
    proc = subprocess.Popen([sys.executable, "-m", "engbot", "run"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(url + "readyz", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                pass
            assert time.monotonic() < deadline and proc.poll() is None, "engbot run never became ready"
            time.sleep(0.2)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, stderr = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, stderr = proc.communicate()
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Any]:
    need(CHROMIUM.is_file(), f"{CHROMIUM} is missing (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        need(False, "Playwright is missing (pip install -e '.[test]')")
        raise
    profile = tmp_path / "chromium-profile"  # a fresh user-data-dir
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 800})
        try:
            yield context.new_page()
        finally:
            context.close()


def until(condition: Callable[[], bool], timeout: float = 60) -> None:
    """Poll from Python: the page's Content-Security-Policy forbids the eval that Playwright's wait_for_function
    needs (and the test keeps it, to check the page works under it)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_ask_watch_it_stream_stop_it_and_read_the_status(engbot_run: str, page: Any, tmp_path: Path) -> None:
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(engbot_run)
    page.wait_for_selector("#online:text('connected')")
    assert page.is_visible("#empty")

    page.fill("#question", LONG_QUESTION)
    page.press("#question", "Enter")
    answer = page.locator("#messages .msg.bot").first
    answer.wait_for()
    until(lambda: len(answer.locator(".text").inner_text()) > 40)
    first = len(answer.locator(".text").inner_text())
    until(lambda: len(answer.locator(".text").inner_text()) > first + 40)  # it streams in
    assert answer.get_attribute("data-running") == "yes"  # still streaming: its Stop button is there
    assert page.locator("#messages .msg.user").inner_text() == LONG_QUESTION

    # the status panel while it answers: ready, one replica with a slot busy, the job answering
    page.wait_for_selector("#status-queue td:text('answering')")
    assert page.locator("#status-ready").inner_text().startswith("Ready")
    assert "SmolLM2-135M-Instruct" in page.locator("#status-model").inner_text()
    assert "1/16 slots" in page.locator("#status-replicas").inner_text()  # the default: one replica, 16 slots

    answer.locator("button[data-action=stop]").click()
    stopped = Messages.STOPPED_BY.format(who="you").strip("_")  # (rendered in italics)
    until(lambda: answer.get_attribute("data-running") == "no")
    text = answer.locator(".text").inner_text()
    assert text.endswith(stopped) and len(text) > first + 40, text
    assert answer.locator("button[data-action=regenerate]").is_visible()
    page.wait_for_selector("#status-queue span:text('0 waiting (at most 16), 0 answering')")

    # a short answer: its buttons, and the status's recent figures
    page.fill("#question", "What is the capital of France?")
    page.click("#send")
    short = page.locator("#messages .msg.bot").nth(1)
    short.locator("button[data-action=good]").wait_for()
    assert short.locator(".text").inner_text().strip()
    page.wait_for_selector("#status-recent dd:text('1')")
    assert "tok/s" in page.locator("#status-recent").inner_text()
    page.click("#status summary")  # the settings, secrets masked
    assert "HTTP_PORT" in page.locator("#status-settings").inner_text()
    assert not errors, errors

    shot = Path(os.environ.get("ENGBOT_SCREENSHOT") or tmp_path / "playground.png")
    page.click("#status summary")
    page.screenshot(path=str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if shutil.which("file"):
        assert "PNG image data, 1280 x 800" in subprocess.run(["file", str(shot)], capture_output=True,
                                                               text=True, check=False).stdout
