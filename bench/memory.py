"""``python -m bench.memory``: where the memory of an engine with the default settings goes, by mapping.

Starts an in-process ``Engine`` as ``engbot run`` does (default settings, the bundled model), answers one question per
slot and then one question with a 1,500-token document per replica (a long prompt touches the whole compute buffer),
then reads ``/proc/<pid>/smaps`` of the parent and each replica and sums PSS (shared pages split among the
processes that map them) by what a mapping is: the GGUF weights (memory-mapped, shared), llama.cpp's and ggml's
libraries, Python and its extension modules, other files, and anonymous memory (the KV cache, compute buffers,
repacked weights and the Python heap). Prints a Markdown table; ``--out`` writes it to a file as well.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
from collections import defaultdict
from pathlib import Path

from bench.long_bench import document
from engine.config import EngineSettings
from engine.local import Engine
from engine.types import GenParams, Job

CATEGORIES = ("GGUF weights", "llama.cpp / ggml libraries", "Python and extension modules", "other files",
              "anonymous (KV cache, buffers, heaps)")
HEADER = re.compile(r"^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$")


def category(path: str, model: str) -> str:
    if path == model:
        return CATEGORIES[0]
    name = os.path.basename(path)
    if "llama" in name or "ggml" in name:
        return CATEGORIES[1]
    if "python" in path or path.endswith(".so") or ".so." in path:
        return CATEGORIES[2]
    if path.startswith("/"):
        return CATEGORIES[3]
    return CATEGORIES[4]


def pss_by_category(pid: int, model: str) -> dict[str, float]:
    """PSS in MiB of one process, by category."""
    out: dict[str, float] = defaultdict(float)
    current = CATEGORIES[4]
    with open(f"/proc/{pid}/smaps", encoding="utf-8", errors="replace") as smaps:
        for line in smaps:
            header = HEADER.match(line)
            if header and not line.startswith(("Pss", "Rss")):
                current = category(header.group(1).strip(), model)
            elif line.startswith("Pss:"):
                out[current] += int(line.split()[1]) / 1024
    return out


async def measure(settings: EngineSettings, model: str) -> dict[str, dict[str, float]]:
    async with Engine(settings) as engine:
        params = GenParams(max_new_tokens=16, temperature=0.0)
        jobs = [engine.submit(Job.ask(f"Question {i}: what is {i} + {i}?", params=params))
                for i in range(engine.capacity)]
        for handle in await asyncio.gather(*jobs):
            async for _ in handle:
                pass
        long = [engine.submit(Job.ask(f"{i}. {document(1500)}\n\nWhat is this about?", params=params))
                for i in range(len(engine.replicas))]
        for handle in await asyncio.gather(*long):
            async for _ in handle:
                pass
        rows = {"parent (engbot run)": pss_by_category(os.getpid(), model)}
        for replica in engine.replicas:
            if replica.pid:
                rows[f"replica {replica.index}"] = pss_by_category(replica.pid, model)
        return rows


def table(rows: dict[str, dict[str, float]], settings: EngineSettings) -> str:
    lines = [f"Settings: NUM_WORKERS={settings.num_workers}, PARALLEL_SLOTS={settings.parallel_slots}, "
             f"KV_CACHE_TOKENS={settings.kv_cache_tokens}, KV_CACHE_TYPE={settings.kv_cache_type}, "
             f"CONTEXT_LENGTH={settings.context_length}; {Path(settings.model_path).name}.", "",
             "| process | " + " | ".join(CATEGORIES) + " | PSS total MiB |",
             "|---|" + "---|" * (len(CATEGORIES) + 1)]
    totals: dict[str, float] = defaultdict(float)
    for name, parts in rows.items():
        cells = [parts.get(c, 0.0) for c in CATEGORIES]
        for c, v in zip(CATEGORIES, cells, strict=True):
            totals[c] += v
        lines.append(f"| {name} | " + " | ".join(f"{v:.0f}" for v in cells) + f" | {sum(cells):.0f} |")
    lines.append("| **all** | " + " | ".join(f"**{totals[c]:.0f}**" for c in CATEGORIES) +
                 f" | **{sum(totals.values()):.0f}** |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    settings = EngineSettings.from_environ(os.environ)
    text = table(asyncio.run(measure(settings, str(Path(settings.model_path).resolve()))), settings)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    print(f"load average {os.getloadavg()[0]:.1f}", file=sys.stderr)


if __name__ == "__main__":
    main()
