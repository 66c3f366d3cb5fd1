"""llama.cpp's ``llama-server``, built from the llama.cpp that the installed llama-cpp-python vendors.

The benchmark compares engbot with llama-server on the same ggml code: the sdist of the installed
llama-cpp-python version is fetched with pip (or taken from ``--sdist``), and only the ``llama-server`` target is
built with the same portable settings as the installed library (``GGML_NATIVE=OFF``, Release). Source and build
live in a cache directory outside the repository (``~/.cache/engbot-bench`` or ``$ENGBOT_BENCH_CACHE``), so reruns
reuse the binary. ``python -m bench.llama_server`` builds it and prints its path.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any

# Only what the server needs: no tests, examples, HTTPS, curl or web UI (the UI would be downloaded or built
# with npm). GGML_NATIVE=OFF and Release match how the installed llama-cpp-python was built.
CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=OFF",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DBUILD_SHARED_LIBS=OFF",
)


def cache_dir() -> Path:
    return Path(os.environ.get("ENGBOT_BENCH_CACHE") or Path.home() / ".cache" / "engbot-bench")


def installed_version() -> str:
    return dist_version("llama-cpp-python")


def source_tree(version: str, sdist: Path | None = None, cache: Path | None = None) -> Path:
    """The unpacked sdist of llama-cpp-python ``version`` (downloaded by pip unless ``sdist`` is given)."""
    cache = cache or cache_dir()
    root = cache / f"llama_cpp_python-{version}"
    if (root / "vendor" / "llama.cpp" / "CMakeLists.txt").exists():
        return root
    if sdist is None:
        downloads = cache / "downloads"
        downloads.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        "--dest", str(downloads), f"llama-cpp-python=={version}"], check=True)
        found = sorted(downloads.glob(f"llama_cpp_python-{version}.tar.gz"))
        if not found:
            raise RuntimeError(f"pip did not leave llama_cpp_python-{version}.tar.gz in {downloads}")
        sdist = found[0]
    partial = cache / f".unpack-{version}"
    shutil.rmtree(partial, ignore_errors=True)
    with tarfile.open(sdist) as tar:
        tar.extractall(partial, filter="data")
    inner = partial / f"llama_cpp_python-{version}"
    if not (inner / "vendor" / "llama.cpp" / "CMakeLists.txt").exists():
        raise RuntimeError(f"{sdist} does not hold llama_cpp_python-{version}/vendor/llama.cpp")
    inner.rename(root)
    shutil.rmtree(partial, ignore_errors=True)
    return root


@dataclass(frozen=True)
class Build:
    binary: Path
    version: str
    seconds: float  # 0 when the cached binary was reused
    flags: tuple[str, ...]


def build(version: str | None = None, sdist: Path | None = None, jobs: int | None = None,
          log: Path | None = None) -> Build:
    """Build (once) the llama-server of llama-cpp-python ``version`` (default: the installed one)."""
    version = version or installed_version()
    cache = cache_dir()
    out = cache / f"llama-server-{version}"
    binary = out / "bin" / "llama-server"
    stamp = out / "engbot-flags.json"
    if binary.exists() and stamp.exists() and json.loads(stamp.read_text()) == list(CMAKE_FLAGS):
        return Build(binary, version, 0.0, CMAKE_FLAGS)
    src = source_tree(version, sdist, cache) / "vendor" / "llama.cpp"
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    log = log or cache / f"build-{version}.log"
    start = time.perf_counter()
    with log.open("w") as sink:
        for cmd in (["cmake", "-S", str(src), "-B", str(out), *generator, *CMAKE_FLAGS],
                    ["cmake", "--build", str(out), "--target", "llama-server", "-j", str(jobs or os.cpu_count() or 1)]):
            sink.write("$ " + " ".join(cmd) + "\n")
            sink.flush()
            if subprocess.run(cmd, stdout=sink, stderr=subprocess.STDOUT).returncode:
                raise RuntimeError(f"building llama-server failed; see {log}")
    if not binary.exists():
        raise RuntimeError(f"the build left no {binary}; see {log}")
    stamp.write_text(json.dumps(list(CMAKE_FLAGS)))
    return Build(binary, version, time.perf_counter() - start, CMAKE_FLAGS)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Server:
    """A running llama-server process; its log goes to ``log``."""

    proc: subprocess.Popen[bytes]
    port: int
    args: list[str]
    log: Path
    props: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def settings(self) -> dict[str, str]:
        """What the server reports about itself: slots, context, flash attention, unified KV, threads."""
        return reported_settings(self.log.read_text(errors="replace"), self.props)


def reported_settings(log: str, props: dict[str, Any]) -> dict[str, str]:
    """The settings llama-server resolved, from /props and its log (the llama_context lines need ``-lv 4``)."""
    out: dict[str, str] = {}
    if "total_slots" in props:
        out["slots"] = str(props["total_slots"])
    for key, pattern in (("threads", r"system_info: n_threads = (\d+ \(n_threads_batch = \d+\))"),
                         ("n_ctx", r"llama_context: n_ctx\s+=\s+(\d+)"),
                         ("n_ctx_seq", r"llama_context: n_ctx_seq\s+=\s+(\d+)"),
                         ("n_batch", r"llama_context: n_batch\s+=\s+(\d+)"),
                         ("n_ubatch", r"llama_context: n_ubatch\s+=\s+(\d+)"),
                         ("flash_attn", r"llama_context: flash_attn\s+=\s+(\S+)"),
                         ("flash_attn resolved", r"resolve_fused_ops: (Flash Attention \S+)"),
                         ("kv_unified", r"kv_unified\s+=\s+'?(\w+)"),
                         ("KV cache", r"llama_kv_cache: size =\s+(.+?),\s+K"),
                         ("prompt cache", r"prompt cache is (\w+)"),
                         ("CPU", r"system_info: .*?\| CPU : (.*?)\s*\|?\s*$")):
        found = re.findall(pattern, log, flags=re.MULTILINE)
        if found:
            out[key] = found[-1].strip()
    if "n_ctx" not in out:
        gen = props.get("default_generation_settings") or {}
        if "n_ctx" in gen:
            out["n_ctx per slot"] = str(gen["n_ctx"])
    return out


def start(binary: Path, model: Path, args: list[str], log: Path, timeout_s: float = 120.0) -> Server:
    """Start ``llama-server -m MODEL --host 127.0.0.1 --port P ARGS`` and wait until /health answers 200."""
    port = free_port()
    full = [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port), *args]
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as sink:
        proc = subprocess.Popen(full, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = Server(proc, port, full, log)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama-server exited with {proc.returncode}; see {log}")
        with contextlib.suppress(OSError, urllib.error.URLError), \
                urllib.request.urlopen(server.url + "/health", timeout=2) as r:
            if r.status == 200:
                with urllib.request.urlopen(server.url + "/props", timeout=5) as p:
                    server.props = json.load(p)
                return server
        time.sleep(0.2)
    stop(server)
    raise RuntimeError(f"llama-server did not become healthy in {timeout_s:.0f} s; see {log}")


def stop(server: Server) -> None:
    if server.proc.poll() is None:
        server.proc.terminate()
        try:
            server.proc.wait(10)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()


@contextlib.contextmanager
def running(binary: Path, model: Path, args: list[str], log: Path) -> Iterator[Server]:
    server = start(binary, model, args, log)
    try:
        yield server
    finally:
        stop(server)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.llama_server", description=__doc__)
    parser.add_argument("--version", help="llama-cpp-python version (default: the installed one)")
    parser.add_argument("--sdist", type=Path, help="a local llama-cpp-python sdist instead of pip download")
    args = parser.parse_args(argv)
    result = build(args.version, args.sdist)
    how = f"built in {result.seconds:.0f} s" if result.seconds else "cached"
    print(f"{result.binary} ({how})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
