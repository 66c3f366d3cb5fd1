"""The channel settings file (``ENGBOT_CONFIG``, TOML): defaults, and overrides per platform, server (Slack
team, Discord guild), channel and for direct messages. Read and checked here; every error names the file, the
line and the key.

    [defaults]                      # every channel of every platform
    system_prompt = "You are a helpful assistant."
    temperature = 0.2

    [dm]                            # direct messages, on any platform
    [slack]                         # all of Slack (then [slack.dm], [slack.team.T0123], [slack.channel.C0123])
    [discord.guild.123456789012345678]
    [discord.channel.234567890123456789]
    allowed_roles = ["345678901234567890"]

Keys: system_prompt, temperature, max_new_tokens, history_chars, allowed_users, allowed_roles (Discord),
show_thinking, model.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bots.thinking import SHOW_THINKING, ShowThinking
from bots.tokens import ContextBudget, estimate_tokens
from engine.errors import ConfigError

Scope = tuple[str, ...]  # ("defaults",), ("dm",), ("slack",), ("slack", "dm"), ("slack", "channel", "C0123")
PLATFORM_TABLES = {"slack": ("team", "channel"), "discord": ("guild", "channel")}
KEYS = ("system_prompt", "temperature", "max_new_tokens", "history_chars", "allowed_users", "allowed_roles",
        "show_thinking", "model")
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/+-]{0,127}$")
IDS = {
    ("slack", "channel"): (re.compile(r"^[CGD][A-Z0-9]{2,}$"), "a Slack channel ID such as C0123ABCD"),
    ("slack", "team"): (re.compile(r"^[TE][A-Z0-9]{2,}$"), "a Slack workspace ID such as T0123ABCD"),
    ("discord", "channel"): (re.compile(r"^\d{1,20}$"), "a Discord channel ID (a number)"),
    ("discord", "guild"): (re.compile(r"^\d{1,20}$"), "a Discord server ID (a number)"),
}
USER_IDS = {"slack": (re.compile(r"^[UW][A-Z0-9]{2,}$"), "Slack user IDs such as U0123ABCD"),
            "discord": (re.compile(r"^\d{1,20}$"), "Discord user IDs (numbers)")}


class ConfigFileError(ConfigError):
    """The settings file has a value that is not allowed: the message names the file, the line and the key."""

    def __init__(self, path: Path, line: int | None, key: str, why: str) -> None:
        where = f"{path}:{line}" if line else str(path)
        Exception.__init__(self, f"ENGBOT_CONFIG: {where}: {key}: {why}" if key else f"ENGBOT_CONFIG: {where}: {why}")
        self.name, self.value, self.allowed = "ENGBOT_CONFIG", str(path), why
        self.path, self.line, self.key = path, line, key


@dataclass(frozen=True, slots=True)
class Overrides:
    """What one table of the file sets; None: not set there."""

    system_prompt: str | None = None
    temperature: float | None = None
    max_new_tokens: int | None = None
    history_chars: int | None = None
    allowed_users: frozenset[str] | None = None
    allowed_roles: frozenset[str] | None = None
    show_thinking: ShowThinking | None = None
    model: str | None = None
    lines: Mapping[str, int] = field(default_factory=dict)  # key -> its line in the file


@dataclass(frozen=True, slots=True)
class Checks:
    """What values are checked against: the model's context, the engine's defaults, the model served."""

    budget: ContextBudget = field(default_factory=ContextBudget)
    max_new_tokens: int = 512
    models: frozenset[str] = frozenset()  # names the default model answers to (empty: any name)


@dataclass(frozen=True, slots=True)
class ChannelConfig:
    """The file's tables by scope (``Scope``); an empty config when there is no file."""

    path: Path | None = None
    scopes: Mapping[Scope, Overrides] = field(default_factory=dict)
    mtime_ns: int = 0


def load_config(path: Path, checks: Checks) -> ChannelConfig:
    """Read and check the file; ``ConfigFileError`` (file, line, key) for anything wrong in it."""
    try:
        stat = path.stat()
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigFileError(path, None, "", f"cannot be read: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(path, None, "", f"is not valid TOML: {exc}") from None
    lines = key_lines(text)
    scopes: dict[Scope, Overrides] = {}

    def table(scope: Scope, value: Any, platform: str | None) -> None:
        if not isinstance(value, dict):
            raise ConfigFileError(path, lines.get((scope[:-1], scope[-1])), ".".join(scope),
                                  "expected a table such as [" + ".".join(scope) + "]")
        settings = {k: v for k, v in value.items() if not isinstance(v, dict)}
        scopes[scope] = _overrides(path, scope, settings, lines, platform, checks)

    for name, value in data.items():
        if name in ("defaults", "dm"):
            if isinstance(value, dict) and (inner := [k for k, v in value.items() if isinstance(v, dict)]):
                raise _error(path, lines, (name,), inner[0], f"[{name}] holds settings, not tables")
            table((name,), value, None)
        elif name in PLATFORM_TABLES:
            if not isinstance(value, dict):
                raise _error(path, lines, (), name, f"expected a table such as [{name}]")
            table((name,), value, name)
            for sub, subvalue in value.items():
                if not isinstance(subvalue, dict):
                    continue
                if sub == "dm":
                    table((name, "dm"), subvalue, name)
                elif sub in PLATFORM_TABLES[name]:
                    pattern, what = IDS[(name, sub)]
                    for ident, overrides in subvalue.items():
                        if not pattern.match(ident):
                            raise _error(path, lines, (name, sub), ident, f"expected {what}")
                        table((name, sub, ident), overrides, name)
                else:
                    allowed = ", ".join(f"[{name}.{t}.<id>]" for t in PLATFORM_TABLES[name]) + f", [{name}.dm]"
                    raise _error(path, lines, (name,), sub, f"unknown table; expected {allowed}")
        else:
            raise _error(path, lines, (), name, "unknown table; expected [defaults], [dm], [slack...] or [discord...]")
    return ChannelConfig(path, scopes, stat.st_mtime_ns)


def _error(path: Path, lines: Mapping[tuple[Scope, str], int], scope: Scope, key: str, why: str) -> ConfigFileError:
    name = ".".join((*scope, key)) if scope else key
    return ConfigFileError(path, lines.get((scope, key)), name, why)


def _overrides(path: Path, scope: Scope, values: Mapping[str, Any], lines: Mapping[tuple[Scope, str], int],
               platform: str | None, checks: Checks) -> Overrides:
    def fail(key: str, why: str) -> ConfigFileError:
        return _error(path, lines, scope, key, why)

    found: dict[str, Any] = {}
    for key, value in values.items():
        if key not in KEYS:
            raise fail(key, "unknown key; expected one of " + ", ".join(KEYS))
        found[key] = value
    max_new = found.get("max_new_tokens")
    if max_new is not None and (isinstance(max_new, bool) or not isinstance(max_new, int)
                                or not 1 <= max_new < checks.budget.context_tokens):
        raise fail("max_new_tokens", f"expected a whole number from 1 to {checks.budget.context_tokens - 1} "
                   f"(less than the context, {checks.budget.context_tokens} tokens), not {max_new!r}")
    temperature = found.get("temperature")
    if temperature is not None and (isinstance(temperature, bool) or not isinstance(temperature, int | float)
                                    or not 0 <= temperature <= 5 or math.isnan(temperature)):
        raise fail("temperature", f"expected a number from 0 to 5, not {temperature!r}")
    history = found.get("history_chars")
    if history is not None and (isinstance(history, bool) or not isinstance(history, int)
                                or not 0 <= history <= 10_000_000):
        raise fail("history_chars", f"expected a whole number of characters from 0 (no history) to 10000000, "
                   f"not {history!r}")
    prompt = found.get("system_prompt")
    if prompt is not None:
        if not isinstance(prompt, str):
            raise fail("system_prompt", "expected a string")
        if why := persona_too_long(prompt, checks.budget, max_new or checks.max_new_tokens):
            raise fail("system_prompt", why)
    thinking = found.get("show_thinking")
    if thinking is not None and thinking not in SHOW_THINKING:
        raise fail("show_thinking", "expected one of " + ", ".join(SHOW_THINKING))
    model = found.get("model")
    if model is not None:
        if not isinstance(model, str) or not MODEL_NAME.match(model):
            raise fail("model", "expected a model name (letters, digits and . _ : / + -)")
        if checks.models and model not in checks.models:
            raise fail("model", "expected one of the models served (the names in MODELS, or the MODEL_PATH file's): "
                       + ", ".join(repr(m) for m in sorted(checks.models)))
    users = _ids(found, "allowed_users", platform, fail)
    roles = found.get("allowed_roles")
    if roles is not None and platform == "slack":
        raise fail("allowed_roles", "Slack has no roles: use allowed_users")
    role_ids = _ids(found, "allowed_roles", "discord", fail) if roles is not None else None
    return Overrides(
        system_prompt=prompt, temperature=float(temperature) if temperature is not None else None,
        max_new_tokens=max_new, history_chars=history, allowed_users=users, allowed_roles=role_ids,
        show_thinking=thinking, model=model,
        lines={k: line for k in found if (line := lines.get((scope, k)))},
    )


def _ids(found: Mapping[str, Any], key: str, platform: str | None, fail: Any) -> frozenset[str] | None:
    value = found.get(key)
    if value is None:
        return None
    if not isinstance(value, list):
        raise fail(key, "expected a list of IDs, such as [\"U0123ABCD\"]")
    ids = [str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
    if platform is None:
        return frozenset(i for i in ids if isinstance(i, str))
    pattern, what = USER_IDS[platform]
    for ident in ids:
        if not isinstance(ident, str) or not pattern.match(ident):
            raise fail(key, f"expected {what}, not {ident!r}")
    return frozenset(ids)


def persona_too_long(text: str, budget: ContextBudget, max_new_tokens: int) -> str | None:
    """Why ``text`` cannot be a system prompt with this context and answer length, with the numbers; None if it
    fits."""
    tokens, most = estimate_tokens(text), budget.persona_tokens(max_new_tokens)
    if tokens <= most:
        return None
    return (f"it is about {tokens:,} tokens ({len(text):,} characters), and at most {most:,} tokens fit: the "
            f"context holds {budget.context_tokens:,} tokens, {max_new_tokens:,} are kept for the answer and half "
            "of the rest for the conversation")


_HEADER = re.compile(r"^\s*\[\s*([^\[\]#]+?)\s*\]\s*(?:#.*)?$")
_KEY = re.compile(r"""^\s*("[^"]*"|'[^']*'|[A-Za-z0-9_-]+)\s*=""")
_PART = re.compile(r"""\s*("[^"]*"|'[^']*'|[A-Za-z0-9_-]+)\s*(?:\.|$)""")


def _parts(header: str) -> Scope:
    return tuple(m.group(1).strip("\"'") for m in _PART.finditer(header) if m.group(1))


def key_lines(text: str) -> dict[tuple[Scope, str], int]:
    """Where each key is set (table, key) -> line number, and each table header (its parent, its last name) ->
    line: tomllib reports the position of syntax errors only, so a wrong value's line is found here."""
    found: dict[tuple[Scope, str], int] = {}
    table: Scope = ()
    quote = ""  # inside a multi-line string
    for number, line in enumerate(text.splitlines(), start=1):
        if quote:
            if line.count(quote) % 2 == 1:
                quote = ""
            continue
        if header := _HEADER.match(line):
            table = _parts(header.group(1))
            for i in range(1, len(table) + 1):
                found.setdefault((table[:i - 1], table[i - 1]), number)
            continue
        if key := _KEY.match(line):
            found.setdefault((table, key.group(1).strip("\"'")), number)
            rest = line[key.end():]
            for marker in ('"""', "'''"):
                if rest.count(marker) % 2 == 1:
                    quote = marker
    return found
