"""``python -m bench`` / ``engbot bench``: run the benchmarks and write docs/benchmarks.md."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import sys
from pathlib import Path

from bench.engine_bench import bench, machine


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="fewer and shorter runs")
    parser.add_argument("--out", default="docs/benchmarks.md")
    args = parser.parse_args(argv)
    header = [
        "# Benchmarks",
        "",
        f"Written by `engbot bench` on {datetime.date.today()} ({machine()}); default model "
        "SmolLM2-135M-Instruct Q4_1 (llama-cpp-python, portable build). Numbers vary with machine load: compare "
        "rows of one run, not runs.",
        "",
    ]
    sections = asyncio.run(bench(args.quick))
    out = Path(args.out)
    keep = ""
    if out.exists():  # sections other tools append (adapters, Docker, Redis) stay
        text = out.read_text()
        marker = "<!-- other benchmarks -->"
        if marker in text:
            keep = text[text.index(marker):]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(header + sections) + ("\n" + keep if keep else ""))
    print("\n".join(sections))
    print(f"written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
