"""What a step costs llama.cpp on this machine when a long prompt is read beside streaming answers: the document's
read time by chunk size, alone, in one batch with the answers' next tokens (what engbot's batched replica does),
and as two calls per step (answers, then the chunk).

    python -m bench.step_cost [--doc-tokens 2936] [--answers 8] [--chunks 32,64,128,256,512] [--out docs/bench-steps.md]

Direct llama.cpp calls through llama-cpp-python's low-level API, with the context engbot's batched replica makes
(8,192 unified KV cells, flash attention, 16 sequences, n_batch = n_ubatch = 512 here, NUM_THREADS threads), on the
bundled model. ``--answers`` sequences hold a 120-token prompt each and get one token per step; the document is one
more sequence read ``chunk`` tokens per step from an empty position. Token ids are synthetic (the kernels' cost does
not depend on them). Each configuration runs once, in order, on a fresh context; the machine's noise is in the
numbers. Writes ``--out``; anything after a ``<!-- notes -->`` line of an existing file is kept.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.engine_bench import machine
from bench.kv_layout import load_model
from bench.peer_report import write
from engine.config import EngineSettings

ANSWER_PROMPT = 120


@dataclass(frozen=True)
class Read:
    mode: str  # "alone", "one batch", "two calls"
    chunk: int
    seconds: float  # the whole document, summed over its steps
    steps: list[float]  # each step's wall time, s

    @property
    def worst_step(self) -> float:
        return max(self.steps)


class Context:
    """A llama.cpp context as engbot's batched replica sets it up, with a batch to fill by hand."""

    def __init__(self, model: Any, threads: int) -> None:
        import llama_cpp
        from llama_cpp import _internals as internals

        params = llama_cpp.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch, params.n_seq_max = 8192, 1024, 512, 16
        params.n_threads = params.n_threads_batch = threads
        params.kv_unified = True
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
        self.ctx = internals.LlamaContext(model=model, params=params, verbose=False)
        self.batch = internals.LlamaBatch(n_tokens=1024, embd=0, n_seq_max=1, verbose=False)
        self.pos = [0] * 16

    def step(self, items: list[tuple[int, int]]) -> float:
        """Decode ``(sequence, tokens)`` items as one batch (logits for each item's last token); wall time, s."""
        b, n = self.batch.batch, 0
        for seq, count in items:
            for i in range(count):
                b.token[n], b.pos[n], b.n_seq_id[n] = 100 + (self.pos[seq] + i) % 1000, self.pos[seq] + i, 1
                b.seq_id[n][0], b.logits[n] = seq, int(i == count - 1)
                n += 1
            self.pos[seq] += count
        b.n_tokens = n
        began = time.perf_counter()
        self.ctx.decode(self.batch)
        return time.perf_counter() - began

    def close(self) -> None:
        self.batch.close()
        self.ctx.close()


def read_document(model: Any, threads: int, mode: str, chunk: int, answers: int, doc_tokens: int) -> Read:
    ctx = Context(model, threads)
    try:
        streaming = answers if mode != "alone" else 0
        for seq in range(streaming):
            ctx.step([(seq, ANSWER_PROMPT)])
        doc, steps = 15, []
        while ctx.pos[doc] < doc_tokens:
            piece = (doc, min(chunk, doc_tokens - ctx.pos[doc]))
            nexts = [(seq, 1) for seq in range(streaming)]
            if mode == "two calls":
                steps.append(ctx.step(nexts) + ctx.step([piece]))
            else:
                steps.append(ctx.step([piece, *nexts]))
        return Read(mode, chunk, sum(steps), steps)
    finally:
        ctx.close()


def report(reads: list[Read], answers: int, doc_tokens: int, threads: int, where: str) -> list[str]:
    best = min(r.seconds for r in reads if r.mode == "alone")
    lines = ["# Benchmarks: what a step costs beside a long prompt", "",
             f"Written by `python -m bench.step_cost --doc-tokens {doc_tokens} --answers {answers}` on "
             f"{time.strftime('%Y-%m-%d')}: {where}; NUM_THREADS={threads}; the bundled model. Method: "
             "bench/step_cost.py's docstring.", "",
             "| document read | chunk tokens per step | steps | read time s | x the fastest alone | mean step ms | "
             "longest step ms |", "|---|---|---|---|---|---|---|"]
    for r in reads:
        what = {"alone": "alone", "one batch": f"in one batch with {answers} answers' tokens",
                "two calls": f"after {answers} answers' tokens, a call each"}[r.mode]
        lines.append(f"| {what} | {r.chunk} | {len(r.steps)} | {r.seconds:.1f} | {r.seconds / best:.2f} | "
                     f"{1000 * r.seconds / len(r.steps):.0f} | {1000 * r.worst_step:.0f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--doc-tokens", type=int, default=2936)
    parser.add_argument("--answers", type=int, default=8)
    parser.add_argument("--chunks", default="32,64,128,256,512")
    parser.add_argument("--out", type=Path, default=Path("docs/bench-steps.md"))
    args = parser.parse_args()
    where = machine()  # the load average before the run
    settings = EngineSettings.from_environ({})
    threads = settings.num_threads
    model = load_model(settings.model_path)
    reads = []
    for chunk in (int(c) for c in args.chunks.split(",")):
        for mode in ("alone", "one batch", "two calls"):
            reads.append(read_document(model, threads, mode, chunk, args.answers, args.doc_tokens))
            r = reads[-1]
            print(f"{mode}, chunk {chunk}: {r.seconds:.1f} s, longest step {r.worst_step * 1000:.0f} ms "
                  f"(load {os.getloadavg()[0]:.1f})", flush=True)
    model.close()
    lines = report(reads, args.answers, args.doc_tokens, threads, where)
    write(args.out, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
