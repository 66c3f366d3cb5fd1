"""The pure parts of the engbot vs llama-server benchmark (bench/peer_model.py, peer_report.py, peer_bench.py,
bench/llama_server.py): parsing configurations, aggregation and percentiles, the report. No server is built or
started here, and nothing is timed."""

from __future__ import annotations

import json
import random
import statistics
from pathlib import Path

import pytest

from bench import llama_server
from bench.peer_bench import chat_request, llama_args
from bench.peer_model import (
    PROMPTS,
    Answer,
    Burst,
    Config,
    Run,
    burst_groups,
    parse_configs,
    percentile,
    prompts_for,
    summarize,
)
from bench.peer_report import NOTES_MARKER, neighbour_rows, observations, ratio_rows, report, write


def test_percentile_interpolates_between_ranks_like_statistics_quantiles() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([5.0], 95) == 5.0
    assert percentile([3.0, 1.0, 2.0], 0) == 1.0 and percentile([3.0, 1.0, 2.0], 100) == 3.0
    rng = random.Random(7)
    for n in (2, 5, 16, 48):
        values = [rng.uniform(0, 10) for _ in range(n)]
        cuts = statistics.quantiles(values, n=100, method="inclusive")
        assert percentile(values, 95) == pytest.approx(cuts[94])
        assert percentile(values, 50) == pytest.approx(statistics.median(values))


def test_configurations_from_the_command_line() -> None:
    configs = parse_configs(["", "PARALLEL_SLOTS=8 FLASH_ATTN=on"], ["", "-np 16 -fa off"])
    assert [c.label for c in configs] == ["engbot (defaults)", "engbot PARALLEL_SLOTS=8 FLASH_ATTN=on",
                                          "llama-server (defaults)", "llama-server -np 16 -fa off"]
    assert configs[0].environ() == {}
    assert configs[1].environ() == {"PARALLEL_SLOTS": "8", "FLASH_ATTN": "on"}
    assert configs[3].extra == ("-np", "16", "-fa", "off")
    with pytest.raises(ValueError, match="NAME=VALUE"):
        parse_configs(["PARALLEL_SLOTS"], [])
    with pytest.raises(ValueError, match="twice"):
        parse_configs([], ["-np 4", "-np  4"])


def test_llama_server_gets_engbots_thread_budget_unless_told_otherwise() -> None:
    assert llama_args(Config("llama-server", ()), 2) == ["-t", "2"]
    assert llama_args(Config("llama-server", ("-np", "16")), 2) == ["-t", "2", "-np", "16"]
    assert llama_args(Config("llama-server", ("--threads", "1")), 2) == ["--threads", "1"]


def test_prompts_are_distinct_within_a_burst_and_shared_by_the_configurations_of_a_round() -> None:
    assert len(set(PROMPTS)) == len(PROMPTS)
    assert len({p.split()[0] for p in PROMPTS}) == len(PROMPTS)  # no shared opening words to cache
    for c in (1, 4, 8, 16, len(PROMPTS)):
        for r in range(3):
            assert len(set(prompts_for(c, r))) == c
            assert prompts_for(c, r) == prompts_for(c, r)
    assert prompts_for(4, 0) != prompts_for(4, 1)
    with pytest.raises(ValueError):
        prompts_for(len(PROMPTS) + 1, 0)


def test_small_bursts_repeat_with_new_questions_until_a_round_has_enough_answers() -> None:
    for c, bursts_of_c in ((1, 8), (4, 2), (8, 1), (16, 1)):
        groups = burst_groups(c, 2, 8)
        assert len(groups) == bursts_of_c and all(len(g) == c for g in groups)
        questions = [q for g in groups for q in g]
        assert len(set(questions)) == len(questions)
        assert groups == burst_groups(c, 2, 8)  # the same for every configuration of the round
    assert burst_groups(1, 0, 8) != burst_groups(1, 1, 8)
    assert burst_groups(4, 0, 1) == [prompts_for(4, 0)]


def test_llama_server_request_asks_for_exactly_n_greedy_tokens_streamed() -> None:
    body = chat_request("Why?", 128)
    assert body["max_tokens"] == 128 and body["ignore_eos"] is True and body["temperature"] == 0.0
    assert body["stream"] is True
    assert [m["role"] for m in body["messages"]] == ["system", "user"] and body["messages"][1]["content"] == "Why?"


def answer(ttft: float, tokens: int = 128, worker: int | None = None) -> Answer:
    return Answer(ttft=ttft, seconds=ttft + 1.0, tokens=tokens, prompt_tokens=30, cached_tokens=7, worker=worker)


def bursts() -> list[Burst]:
    return [
        Burst("engbot (defaults)", 4, 0, [answer(0.1, worker=0), answer(0.2, worker=1), answer(0.3, worker=0),
                                          answer(0.4, worker=1)], wall=4.0, pss_parts=(100.0, 100.0, 100.0), load=1.0),
        Burst("engbot (defaults)", 4, 1, [answer(0.5, worker=0), answer(0.6, worker=0), answer(0.7, worker=0),
                                          answer(0.8, worker=1)], wall=2.0, pss_parts=(120.0, 100.0, 100.0), load=1.0),
        Burst("engbot (defaults)", 4, 2, [answer(0.9, 100, 0), answer(1.0, worker=1), answer(1.1, worker=0),
                                          answer(1.2, worker=1)], wall=8.0, pss_parts=(110.0, 100.0, 100.0), load=1.0),
        Burst("llama-server (defaults)", 4, 0, [answer(0.2), answer(0.2), answer(0.2), answer(0.2)], wall=2.0,
              pss_parts=(100.0,), load=1.0),
    ]


def test_summaries_take_the_median_rate_of_the_rounds_and_percentiles_over_all_answers() -> None:
    s = summarize(bursts())
    mine = s["engbot (defaults)", 4]
    assert mine.rates == (128.0, 256.0, (100 + 3 * 128) / 8.0)
    assert mine.rate == 128.0
    ttfts = [0.1 * i for i in range(1, 13)]
    assert mine.ttft_p50 == pytest.approx(percentile(ttfts, 50))
    assert mine.ttft_p95 == pytest.approx(percentile(ttfts, 95))
    assert mine.ttft_max == pytest.approx(1.2)
    assert mine.pss_mib == 310.0
    assert mine.answers == 12 and mine.tokens == (100, 128) and mine.prompt_tokens == (30, 30)
    assert mine.cached_tokens == (7, 7)
    assert mine.workers == {0: 7, 1: 5}
    theirs = s["llama-server (defaults)", 4]
    assert theirs.rate == 256.0 and theirs.workers == {}


def test_ratio_rows_compare_each_engbot_configuration_with_each_llama_server_one() -> None:
    configs = parse_configs([""], ["", "-np 16"])
    summaries = summarize(bursts())
    rows = ratio_rows(summaries, configs, [4])
    assert len(rows) == 1  # no "-np 16" bursts
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[:3] == ["engbot (defaults)", "llama-server (defaults)", "4"]
    assert cells[3] == "**0.50**"  # 128 / 256 tok/s
    assert cells[-1] == "no"


def test_with_a_neighbour_each_configuration_runs_again_beside_a_busy_cpu_and_is_compared_with_its_peer_alike(
) -> None:
    configs = parse_configs([""], [""], neighbour=True)
    assert [c.label for c in configs] == ["engbot (defaults)", "llama-server (defaults)",
                                          "engbot (defaults) + one CPU busy", "llama-server (defaults) + one CPU busy"]
    assert [c.busy for c in configs] == [False, False, True, True]
    quiet_engbot, quiet_llama = bursts()[0], bursts()[3]  # 128 and 256 tok/s
    loud = [Burst("engbot (defaults) + one CPU busy", 4, 0, [answer(0.4)] * 4, 8.0, (1.0,), 2.0),  # 64 tok/s
            Burst("llama-server (defaults) + one CPU busy", 4, 0, [answer(0.8)] * 4, 16.0, (1.0,), 2.0)]  # 32
    summaries = summarize([quiet_engbot, quiet_llama, *loud])
    ratios = [[c.strip() for c in r.strip("|").split("|")] for r in ratio_rows(summaries, configs, [4])]
    assert [(r[0], r[1], r[3]) for r in ratios] == [  # busy against busy, quiet against quiet
        ("engbot (defaults)", "llama-server (defaults)", "**0.50**"),
        ("engbot (defaults) + one CPU busy", "llama-server (defaults) + one CPU busy", "**2.00**")]
    falls = [[c.strip() for c in r.strip("|").split("|")] for r in neighbour_rows(summaries, configs, [4])]
    assert falls == [["engbot (defaults)", "4", "128.0", "64.0", "**0.50**", "0.39", "0.40"],
                     ["llama-server (defaults)", "4", "256.0", "32.0", "**0.12**", "0.20", "0.80"]]
    assert neighbour_rows(summaries, parse_configs([""], [""]), [4]) == []


def test_observations_flag_short_answers_and_uneven_dispatch() -> None:
    configs = parse_configs([""], [""])
    result = Run(configs, [4], 3, 128, bursts=bursts())
    text = "\n".join(observations(result, summarize(result.bursts)))
    assert "not 128 tokens long" in text and "engbot (defaults) at C=4: 100..128" in text
    even = [Burst("engbot (defaults)", 4, 0, [answer(0.1, worker=i % 2) for i in range(4)], 4.0, (1.0,), 1.0)]
    text = "\n".join(observations(Run(configs, [4], 1, 128, bursts=even), summarize(even)))
    assert "Every answer on both sides was 128 tokens long" in text and "imbalance" not in text
    skewed = [Burst("engbot (defaults)", 8, 0, [answer(0.1, worker=0)] * 7 + [answer(0.1, worker=1)], 4.0, (1.0,),
                    1.0)]
    text = "\n".join(observations(Run(configs, [8], 1, 128, bursts=skewed), summarize(skewed)))
    assert "Dispatch imbalance, engbot (defaults) at C=8: answers per replica #0: 7, #1: 1" in text


def test_report_has_a_row_per_configuration_and_concurrency_and_keeps_hand_written_notes(tmp_path: Path) -> None:
    configs = parse_configs([""], [""])
    result = Run(configs, [4], 3, 128, bursts=bursts(), loads=[0.5, 2.5], server_version="version: 1 (abc)",
                 reported={"llama-server (defaults)": {"slots": "4"}})
    lines = report(result, ["--rounds", "3"], Path("/models/m.gguf"))
    text = "\n".join(lines)
    assert "`python -m bench.peer_bench --rounds 3`" in text and "load average 0.5 to 2.5" in text
    rows = [line for line in lines if line.startswith(("| engbot (defaults) | 4 |", "| llama-server (defaults) | 4 |"))]
    assert len(rows) == 2
    assert "| 100..128 |" in rows[0] and "**128.0**" in rows[0] and "**256.0**" in rows[1]
    assert "slots=4" in text
    assert "- engbot (defaults): engine process 110 + replicas 100 + 100 MiB" in text  # the last round's
    assert "- llama-server (defaults): 100 MiB" in text
    out = tmp_path / "bench-peers.md"
    out.write_text("old numbers\n" + NOTES_MARKER + "\nkept by hand\n")
    write(out, lines)
    written = out.read_text()
    assert "old numbers" not in written and written.endswith(NOTES_MARKER + "\nkept by hand\n")
    assert written.startswith("# Benchmarks: engbot vs llama.cpp's llama-server")


def test_the_build_is_reused_when_the_binary_and_its_flags_are_cached(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENGBOT_BENCH_CACHE", str(tmp_path))
    out = tmp_path / "llama-server-9.9.9"
    (out / "bin").mkdir(parents=True)
    (out / "bin" / "llama-server").write_text("")
    (out / "engbot-flags.json").write_text('["-DOTHER=1"]')
    with pytest.raises((RuntimeError, OSError)):  # other flags: it would rebuild, and there is no source
        llama_server.build("9.9.9", sdist=tmp_path / "missing.tar.gz")
    (out / "engbot-flags.json").write_text(json.dumps(list(llama_server.CMAKE_FLAGS)))
    cached = llama_server.build("9.9.9", sdist=tmp_path / "missing.tar.gz")
    assert cached.binary == out / "bin" / "llama-server" and cached.seconds == 0.0


# lines of a real llama-server log (llama-cpp-python 0.3.36's llama.cpp, -lv 4), default settings
SERVER_LOG = """\
0.00.007.537 I cmn  common_param: system_info: n_threads = 2 (n_threads_batch = 2) / 2 | CPU : SSE3 = 1 | SSSE3 = 1 \
| AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 |
0.00.007.549 I srv  llama_server: n_parallel is set to auto, using n_parallel = 4 and kv_unified = true
0.00.557.558 I llama_context: n_ctx                 = 8192
0.00.557.569 I llama_context: n_ctx_seq             = 8192
0.00.557.580 I llama_context: n_batch               = 2048
0.00.557.590 I llama_context: n_ubatch              = 512
0.00.557.612 I llama_context: flash_attn            = auto
0.00.557.623 I llama_context: kv_unified            = true
0.00.842.759 I llama_kv_cache: size =  180.00 MiB (  8192 cells,  30 layers,  4/1 seqs), K (f16):   90.00 MiB, \
V (f16):   90.00 MiB
0.00.853.195 I resolve_fused_ops: Flash Attention enabled
0.02.238.158 I srv    load_model: initializing, n_slots = 4, n_ctx_slot = 8192, kv_unified = 'true'
0.02.238.225 I srv    load_model: prompt cache is enabled, size limit: 8192 MiB
"""


def test_llama_servers_own_settings_are_read_from_its_props_and_log() -> None:
    got = llama_server.reported_settings(SERVER_LOG, {"total_slots": 4, "default_generation_settings": {}})
    assert got["slots"] == "4" and got["threads"] == "2 (n_threads_batch = 2)"
    assert (got["n_ctx"], got["n_ctx_seq"], got["n_batch"], got["n_ubatch"]) == ("8192", "8192", "2048", "512")
    assert got["flash_attn"] == "auto" and got["flash_attn resolved"] == "Flash Attention enabled"
    assert got["kv_unified"] == "true" and got["prompt cache"] == "enabled"
    assert got["KV cache"].startswith("180.00 MiB")
    assert got["CPU"].startswith("SSE3 = 1") and got["CPU"].endswith("REPACK = 1")
    # at the default verbosity the log is terse: what /props says is kept
    terse = llama_server.reported_settings("", {"total_slots": 16, "default_generation_settings": {"n_ctx": 2048}})
    assert terse == {"slots": "16", "n_ctx per slot": "2048"}
