"""The engbot vs llama-server benchmark's report: the tables, the ratios against the targets, and observations
(the numbers in, the Markdown out; ``write`` keeps a file's hand-written notes)."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
from collections.abc import Sequence
from importlib.metadata import version as dist_version
from pathlib import Path

import psutil

from bench.peer_model import SYSTEM, Config, Run, Summary, summarize

NOTES_MARKER = "<!-- notes -->"


def ratio_rows(summaries: dict[tuple[str, int], Summary], configs: Sequence[Config],
               concurrency: Sequence[int]) -> list[str]:
    """engbot / llama-server per C: throughput ratio, TTFT p95 of both, and whether the target holds."""
    rows = []
    for e in (c for c in configs if c.kind == "engbot"):
        for peer in (c for c in configs if c.kind == "llama-server" and c.busy == e.busy):
            for c in concurrency:
                mine, theirs = summaries.get((e.label, c)), summaries.get((peer.label, c))
                if mine is None or theirs is None:
                    continue
                ratio = mine.rate / theirs.rate
                met = "yes" if ratio >= 1.0 and mine.ttft_p95 <= theirs.ttft_p95 else "no"
                rows.append(f"| {e.label} | {peer.label} | {c} | **{ratio:.2f}** | {mine.ttft_p95:.2f} | "
                            f"{theirs.ttft_p95:.2f} | {mine.pss_mib / theirs.pss_mib:.2f} | {met} |")
    return rows


def neighbour_rows(summaries: dict[tuple[str, int], Summary], configs: Sequence[Config],
                   concurrency: Sequence[int]) -> list[str]:
    """Per configuration and C: tok/s beside a busy CPU / tok/s on a quiet machine (the fall), and TTFT p95 of both."""
    rows = []
    for busy in (c for c in configs if c.busy):
        quiet = Config(busy.kind, busy.extra)
        for c in concurrency:
            loud, calm = summaries.get((busy.label, c)), summaries.get((quiet.label, c))
            if loud is None or calm is None:
                continue
            rows.append(f"| {quiet.label} | {c} | {calm.rate:.1f} | {loud.rate:.1f} | **{loud.rate / calm.rate:.2f}** "
                        f"| {calm.ttft_p95:.2f} | {loud.ttft_p95:.2f} |")
    return rows


def observations(result: Run, summaries: dict[tuple[str, int], Summary]) -> list[str]:
    """Things in this run's numbers that deserve a look (written out whether or not they occur)."""
    out = []
    short = [s for s in summaries.values() if s.tokens != (result.tokens, result.tokens)]
    if short:
        out += [f"- **Answers not {result.tokens} tokens long**: " + "; ".join(
            f"{s.config} at C={s.concurrency}: {s.tokens[0]}..{s.tokens[1]}" for s in short) + "."]
    else:
        out += [f"- Every answer on both sides was {result.tokens} tokens long."]
    for what, attr in (("Prompt tokens", "prompt_tokens"), ("Prompt tokens taken from the cache", "cached_tokens")):
        by_side: dict[str, set[tuple[int, int]]] = {}
        for s in summaries.values():
            by_side.setdefault(s.config.split(" ")[0], set()).add(getattr(s, attr))
        out.append(f"- {what} per answer (min..max per burst group): " + "; ".join(
            f"{kind}: " + ", ".join(f"{a}..{b}" for a, b in sorted(spans)) for kind, spans in sorted(by_side.items()))
            + ("." if attr == "cached_tokens" else " (the same chat template gives the same counts)."))
    for s in summaries.values():
        if len(s.workers) > 1 and s.concurrency > 1:
            counts = list(s.workers.values())
            if max(counts) > 1.5 * min(counts) + 1:
                out.append(f"- Dispatch imbalance, {s.config} at C={s.concurrency}: answers per replica "
                           + ", ".join(f"#{w}: {n}" for w, n in s.workers.items()) + ".")
        if s.answers >= 4 and s.ttft_max > 2 * s.ttft_p95 and s.ttft_max > 0.5:
            out.append(f"- TTFT outlier, {s.config} at C={s.concurrency}: max {s.ttft_max:.2f} s against p95 "
                       f"{s.ttft_p95:.2f} s.")
    return out


def report(result: Run, argv: Sequence[str], model: Path) -> list[str]:
    summaries = summarize(result.bursts)
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parent).stdout.strip() or "unknown"
    build = result.build
    server_cpu = next((result.reported.get(c.label, {}).get("CPU") for c in result.configs
                       if c.kind == "llama-server"), None) or "?"
    lines = [
        "# Benchmarks: engbot vs llama.cpp's llama-server", "",
        f"Written by `python -m bench.peer_bench {shlex.join(argv)}` on {datetime.date.today()}: "
        f"{platform.machine()}, {os.cpu_count()} CPUs ({cpu_model()}), "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, Python {platform.python_version()}; 1-minute load "
        f"average {min(result.loads):.1f} to {max(result.loads):.1f} during the run. Model {model.name}. "
        "Numbers vary with machine load: compare rows of one run, not runs.", "",
        f"Versions: engbot {commit}; llama-cpp-python {dist_version('llama-cpp-python')} (the engine's library); "
        f"llama-server built from the same version's sdist ({result.server_version}) with "
        f"`{' '.join(build.flags) if build else ''}`, target `llama-server` only. CPU features compiled in: "
        f"llama-cpp-python {result.library_info}; llama-server {server_cpu}.", "",
        f"Method: {result.rounds} round(s); in each round, for each C in {', '.join(map(str, result.concurrency))}, "
        "every configuration is started fresh, warmed up with 4 short answers, then gets C distinct chat questions "
        "at once (same questions for every configuration of that round)"
        + (f", and again with new questions until it has answered {result.min_answers} (tok/s over the bursts' "
           "summed wall time)" if result.min_answers > 1 else "")
        + "; configurations run back to back, in "
        f"alternating order from round to round. Every answer is greedy and {result.tokens} tokens "
        "(end-of-text masked). System prompt \"" + SYSTEM + "\" on both sides. TTFT: submit -> first text, timed "
        "in the benchmark process for both sides (llama-server: streamed `/v1/chat/completions` over HTTP on "
        "127.0.0.1; engbot: the in-process `Engine`, as an adapter uses it). PSS after the burst: llama-server's "
        "process; engbot's engine process (the benchmark process itself) plus its replica processes.", "",
        "## Results", "",
        "| configuration | C | answers | tokens/answer | tok/s (median) | tok/s per round | TTFT p50 s | "
        "TTFT p95 s | TTFT max s | PSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for config in result.configs:
        for c in result.concurrency:
            s = summaries.get((config.label, c))
            if s is None:
                continue
            span = f"{s.tokens[0]}" if s.tokens[0] == s.tokens[1] else f"{s.tokens[0]}..{s.tokens[1]}"
            lines.append(f"| {config.label} | {c} | {s.answers} | {span} | **{s.rate:.1f}** | "
                         f"{', '.join(f'{r:.1f}' for r in s.rates)} | {s.ttft_p50:.2f} | {s.ttft_p95:.2f} | "
                         f"{s.ttft_max:.2f} | {s.pss_mib:.0f} |")
    lines += ["", f"PSS per process after the last burst at C={max(result.concurrency)}:", ""]
    for config in result.configs:
        last = [b for b in result.bursts if b.config == config.label and b.concurrency == max(result.concurrency)]
        if last:
            parts = last[-1].pss_parts
            named = (f"engine process {parts[0]:.0f} + replicas " + " + ".join(f"{p:.0f}" for p in parts[1:])
                     if config.kind == "engbot" else f"{parts[0]:.0f}")
            lines.append(f"- {config.label}: {named} MiB")
    lines += ["", "## engbot / llama-server", "",
              "Target (issue 9): engbot >= 1.0x llama-server's tok/s at every C, and TTFT p95 <= llama-server's.", "",
              "| engbot | llama-server | C | tok/s ratio | engbot TTFT p95 s | llama-server TTFT p95 s | PSS ratio | "
              "target met |",
              "|---|---|---|---|---|---|---|---|",
              *ratio_rows(summaries, result.configs, result.concurrency)]
    falls = neighbour_rows(summaries, result.configs, result.concurrency)
    if falls:
        lines += ["", "## Beside a busy CPU", "",
                  "Each configuration again, with another process spinning on one CPU from before it starts to the "
                  "end of its burst. Target (issue 17): engbot's tok/s falls by no more than llama-server's.", "",
                  "| configuration | C | tok/s, quiet | tok/s, one CPU busy | busy / quiet | TTFT p95 quiet s | "
                  "TTFT p95 busy s |", "|---|---|---|---|---|---|---|", *falls]
    lines += ["", "## Settings", ""]
    for config in result.configs:
        reported = result.reported.get(config.label, {})
        lines.append(f"- **{config.label}**: `{result.commands.get(config.label, '')}`; "
                     + ", ".join(f"{k}={v}" for k, v in reported.items()))
    lines += ["", "engbot's dispatch (answers per replica, all rounds):", ""]
    for s in summaries.values():
        if s.workers:
            lines.append(f"- {s.config}, C={s.concurrency}: " + ", ".join(f"#{w}: {n}" for w, n in s.workers.items()))
    lines += ["", "## Observations (automatic)", "", *observations(result, summaries)]
    return lines


def write(out: Path, lines: list[str]) -> None:
    keep = ""
    if out.exists():
        text = out.read_text()
        if NOTES_MARKER in text:
            keep = text[text.index(NOTES_MARKER):]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n" + ("\n" + keep if keep else ""))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"
