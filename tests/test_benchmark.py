"""The benchmark's CLI, its latest.json shape, its report writer, and a tiny run on the CPU."""

import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import benchmark_embeddings as bench  # noqa: E402
import embeddings_report as report  # noqa: E402

XL_ALIBI = bench.CONFIGS["alibi"][-1]


# --- CLI ----------------------------------------------------------------------------------


def test_defaults_are_the_seeds():
    args = bench.parse_args([])
    assert (args.warmup, args.iters, args.dtype) == (10, 100, "float16")
    assert args.methods == ["rope", "alibi"] and args.frameworks == ["torch", "jax"]
    assert args.providers == list(report.PROVIDERS)
    configs = bench.selected_configs(args)
    assert [(c.name, c.heads, c.head_dim, c.seq_len, c.batch) for c in configs["rope"]] == [
        ("small", 32, 64, 512, 4), ("medium", 64, 128, 2048, 2), ("large", 64, 128, 8192, 1),
        ("xl", 128, 128, 32768, 1)]
    assert [(c.name, c.heads, c.seq_len, c.batch) for c in configs["alibi"]] == [
        ("small", 32, 512, 4), ("medium", 64, 2048, 2), ("large", 128, 8192, 1), ("xl", 128, 32768, 1)]


def test_a_cpu_run_does_not_write_over_the_committed_report_unless_asked():
    if torch.cuda.is_available():
        pytest.skip("the default output differs on a GPU")
    assert bench.parse_args([]).output == BENCHMARKS / "results" / "cpu"
    assert bench.parse_args(["--output", "benchmarks"]).output == Path("benchmarks")


def test_custom_configuration_from_the_seeds_flags():
    args = bench.parse_args(["--num_heads", "64", "--head_dim", "128", "--seq_len", "8192",
                             "--methods", "rope", "alibi", "--dtype", "bfloat16"])
    configs = bench.selected_configs(args)
    assert configs["rope"] == [bench.Config("custom", 64, 8192, 1, 128)]
    assert configs["alibi"] == [bench.Config("custom", 64, 8192, 1)]
    assert args.dtype == "bfloat16"


def test_quick_mode_runs_small_configurations_with_few_iterations():
    args = bench.parse_args(["--quick", "--methods", "alibi"])
    assert (args.warmup, args.iters) == (bench.QUICK_WARMUP, bench.QUICK_ITERS)
    assert [c.name for c in bench.selected_configs(args)["alibi"]] == ["small"]
    assert bench.parse_args(["--quick", "--iters", "7"]).iters == 7


@pytest.mark.parametrize("argv", [["--head_dim", "63"], ["--dtype", "int8"], ["--iters", "0"],
                                  ["--methods", "xpos"], ["--providers", "cuda"]])
def test_bad_arguments_are_refused(argv, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(argv)


# --- bytes and fitting ----------------------------------------------------------------------


def test_roofline_bytes():
    xl = bench.CONFIGS["rope"][-1]
    qk = 2 * 32768 * 128 * 128 * 2
    assert bench.op_bytes("rope", xl, "total", "float16") == 2 * qk
    assert bench.op_bytes("rope", xl, "apply", "float16") == 2 * qk + 2 * 32768 * 128 * 2
    assert bench.op_bytes("alibi", XL_ALIBI, "bias", "float16") == 128 * 32768**2 * 4
    assert bench.op_bytes("alibi", XL_ALIBI, "add_to_scores", "float16") == 2 * 128 * 32768**2 * 2


def test_a_row_too_big_for_memory_says_its_size_instead_of_allocating():
    x = bench.TorchInputs(XL_ALIBI, "float16", torch.device("cpu"))
    harness = bench.Harness(torch.device("cpu"), warmup=1, iters=1)
    provider = bench.SeedTorch(x, "alibi")
    for op, tensor in [("bias", "bias (1, 128, 32768, 32768) float32 alone is 550 GB"),
                       ("add_to_scores", "scores (1, 128, 32768, 32768) float16 alone is 275 GB")]:
        ms, burst_ms, peak, note = bench.measure(harness, provider, "alibi", XL_ALIBI, op, "float16")
        assert ms is None and burst_ms is None and peak is None
        assert note.startswith("does not fit") and tensor in note
    assert "scores" not in x.__dict__  # nothing was allocated


@pytest.mark.parametrize("provider, make_inputs", [
    (bench.TrinixTorch, lambda config: bench.TorchInputs(config, "float32", torch.device("cpu"))),
    (bench.TrinixJax, lambda config: bench.JaxInputs(config, "float32")),
])
def test_trinix_rows_call_the_api_as_it_is(provider, make_inputs, monkeypatch):
    """The trinix providers' calls, through Triton's interpreter on tiny shapes."""
    monkeypatch.setattr(provider, "backend", "interpret")
    harness = bench.Harness(torch.device("cpu"), warmup=1, iters=1)
    for method, config in [("rope", bench.Config("tiny", 2, 16, 1, 8)), ("alibi", bench.Config("tiny", 2, 16, 1))]:
        chosen = provider(make_inputs(config), method)
        for op in report.METHODS[method]["ops"]:
            ms, burst_ms, _, note = bench.measure(harness, chosen, method, config, op, "float32")
            assert ms is not None and ms > 0, (method, op, note)
            assert burst_ms is None  # bursts only on a GPU


VARIANT_BASE = bench.Config("tiny", 2, 8, 1, 128)  # head_dim 128, as the variants assume


def test_rope_variants_are_checked_then_timed():
    """Every variant's rows: PyTorch and trinix (through Triton's interpreter) checked and timed,
    one roofline a variant, Liger's reason where it has no such rotation."""
    harness = bench.Harness(torch.device("cpu"), warmup=1, iters=1)
    rows = bench.variant_rows(harness, 10.0, VARIANT_BASE, ["pytorch", "liger", "triton"], backend="interpret")
    assert [(r["config"], r["provider"]) for r in rows] == [
        (f"tiny-{v}", p) for v in report.ROPE_VARIANTS for p in bench.VARIANT_PROVIDERS]
    for row in rows:
        report.validate_results({"meta": fake_results()["meta"], "rows": [row]})
        if row["provider"] in ("pytorch", "triton"):
            assert row["ms"] > 0 and row["note"] is None, row
        else:
            assert row["ms"] is None and row["note"], row
    by_variant = {}
    for row in rows:
        by_variant.setdefault(row["config"], set()).add(row["roofline_ms"])
    assert all(len(rooflines) == 1 for rooflines in by_variant.values())
    # q and k read and written, two tables (8, 32) read: 32 of 128 columns rotate.
    (partial,) = by_variant["tiny-partial"]
    assert partial == pytest.approx((2 * 2 * 8 * 2 * 128 * 2 + 2 * 8 * 32 * 2) / 10.0 / 1e6)
    liger = {r["config"]: r["note"] for r in rows if r["provider"] == "liger"}
    assert liger["tiny-partial"] == liger["tiny-gptj"] == "Liger-Kernel rotates every column, in half-split pairs only"
    if not torch.cuda.is_available():
        assert liger["tiny-gqa"] == bench.NEEDS_GPU
    assert {r["note"] for r in rows if r["provider"] == "torch_compile"} == {"not selected (--providers)"}


def test_variants_follow_the_seeds_configurations_but_not_quick_runs(monkeypatch):
    tiny = [bench.Config("small", 2, 8, 1, 128), bench.Config("large", 2, 8, 1, 128)]
    monkeypatch.setitem(bench.CONFIGS, "rope", tiny)
    argv = ["--methods", "rope", "--frameworks", "torch", "--providers", "pytorch", "--warmup", "1", "--iters", "1"]
    results, _ = bench.run_benchmark(bench.parse_args(argv))
    assert list(dict.fromkeys(r["config"] for r in results["rows"])) == [
        "small", "large", *(f"large-{v}" for v in report.ROPE_VARIANTS)]
    assert all(r["ms"] > 0 for r in results["rows"] if r["provider"] == "pytorch")
    results, _ = bench.run_benchmark(bench.parse_args([*argv, "--quick"]))
    assert {r["config"] for r in results["rows"]} == {"small"}


def test_a_wrong_rope_variant_is_not_timed(monkeypatch):
    """A provider whose result differs from the PyTorch rotation gets no time, but a note."""
    import trinix.torch.rope as trinix_rope

    real = trinix_rope.apply_rotary_pos_emb

    def ignores_interleaved(*args, interleaved=False, **kwargs):
        return real(*args, **kwargs)

    monkeypatch.setattr(trinix_rope, "apply_rotary_pos_emb", ignores_interleaved)
    harness = bench.Harness(torch.device("cpu"), warmup=1, iters=1)
    rows = bench.variant_rows(harness, 10.0, VARIANT_BASE, ["triton"], backend="interpret")
    triton = {r["config"]: r for r in rows if r["provider"] == "triton"}
    for variant in ("interleaved", "gptj"):
        assert triton[f"tiny-{variant}"]["ms"] is None
        assert triton[f"tiny-{variant}"]["note"].startswith("wrong: relative error")
    assert triton["tiny-gqa"]["ms"] > 0


def test_bursts_last_about_burst_ms_and_are_timed_whole():
    """A JAX row's calls run in bursts of equal length, sized from a first estimate so that a
    burst lasts about BURST_MS, and at least MIN_BURSTS of them are timed."""
    harness = bench.Harness(torch.device("cpu"), warmup=1, iters=5)
    harness.cuda = True  # the burst path; nothing in it touches a GPU
    started, bursts = [0], []

    def start():
        time.sleep(0.002)
        started[0] += 1
        return started[0]

    def wait(out):
        bursts.append(out - sum(bursts))

    ms = harness.median_ms("jax", bench.Run(start, wait))
    timed = bursts[2:]  # after the warm-up call and the 3-call estimate
    assert len(timed) >= bench.MIN_BURSTS and len(set(timed)) == 1
    assert 1 <= timed[0] <= bench.BURST_MS / 2  # each call takes at least 2 ms
    assert ms >= 2.0


def test_providers_that_cannot_run_here_say_why():
    config = bench.CONFIGS["rope"][0]
    x = bench.TorchInputs(config, "float16", torch.device("cpu"))
    with pytest.raises(bench.Unavailable, match="Liger-Kernel has no ALiBi"):
        bench.Liger(x, "alibi")
    if not torch.cuda.is_available():
        with pytest.raises(bench.Unavailable, match="needs a CUDA GPU"):
            bench.TrinixTorch(x, "rope")


# --- latest.json ----------------------------------------------------------------------------


def fake_results(on_gpu: bool = True) -> dict:
    """Rows for every configuration, op and provider: Triton slower than PyTorch at small,
    faster above; the ALiBi xl bias and scores too big, as on an H200."""
    rows = []
    for method, configs in bench.CONFIGS.items():
        for size, config in enumerate(configs):
            for op in report.METHODS[method]["ops"]:
                for provider in report.PROVIDERS:
                    ms = 0.1 * 4.0**size
                    if provider in ("triton", "jax_triton"):
                        ms *= 1.5 if size == 0 else 0.5
                    note = None
                    if not on_gpu and provider in ("triton", "jax_triton", "liger"):
                        ms, note = None, bench.NEEDS_GPU
                    if method == "alibi" and config.name == "xl" and op != "slopes":
                        ms, note = None, "does not fit: needs about 825 GB (bias (1, 128, 32768, 32768) float32 alone is 550 GB), 140 GB free on the device"
                    burst_ms = 1.25 * ms if on_gpu and provider == "triton" and ms is not None else None
                    rows.append(dict(method=method, config=config.name, op=op, provider=provider,
                                     ms=ms, burst_ms=burst_ms, roofline_ms=0.01 * 4.0**size,
                                     peak_mb=None if ms is None else 12.5, note=note))
    for variant in report.ROPE_VARIANTS:
        for provider in bench.VARIANT_PROVIDERS:
            ms, note = (0.4 if provider == "triton" else 0.8), None
            if provider == "liger" and variant in ("partial", "interleaved", "gptj"):
                ms, note = None, "Liger-Kernel rotates every column, in half-split pairs only"
            if not on_gpu and provider in ("triton", "liger"):
                ms, note = None, bench.NEEDS_GPU
            rows.append(dict(method="rope", config=f"large-{variant}", op="apply", provider=provider, ms=ms,
                             burst_ms=None, roofline_ms=0.32, peak_mb=None, note=note))
    gpu = "NVIDIA H200" if on_gpu else "none (CPU only: x86_64, 2 cores)"
    return {"meta": {"gpu": gpu, "dtype": "float16", "date": "2026-11-29", "copy_gbps": 4249.0,
                     "versions": {"torch": "2.11.0", "triton": "3.6.0"}},
            "rows": rows}


def test_json_shape_is_accepted_and_survives_a_round_trip():
    results = fake_results()
    report.validate_results(results)
    report.validate_results(json.loads(json.dumps(results)))


def _broken(edit):
    results = fake_results()
    edit(results)
    return results


@pytest.mark.parametrize("edit, message", [
    (lambda r: r.update(extra=1), "exactly the keys"),
    (lambda r: r["meta"].pop("copy_gbps"), "exactly the keys"),
    (lambda r: r["meta"].update(copy_gbps=4249), "copy_gbps"),
    (lambda r: r["meta"].update(date="29/11/2026"), "YYYY-MM-DD"),
    (lambda r: r["meta"]["versions"].update(torch=2), "version strings"),
    (lambda r: r["rows"][0].update(gbps=1.0), "exactly the keys"),
    (lambda r: r["rows"][0].update(ms="0.1"), "ms"),
    (lambda r: r["rows"][0].update(peak_mb=True), "peak_mb"),
    (lambda r: r["rows"][0].update(method="xpos"), "method"),
    (lambda r: r["rows"][0].update(op="bias"), "not an op of rope"),
    (lambda r: r["rows"][0].update(provider="cuda"), "provider"),
    (lambda r: r["rows"][0].update(ms=None, note=None), "no note"),
    (lambda r: r["rows"].append(copy.deepcopy(r["rows"][0])), "repeats"),
])
def test_json_shape_violations_are_refused(edit, message):
    with pytest.raises(ValueError, match=message):
        report.validate_results(_broken(edit))


# --- the report -----------------------------------------------------------------------------

RUN_INFO = {"warmup": 10, "iters": 100, "command": "python benchmarks/benchmark_embeddings.py"}


def test_report_keeps_the_seeds_structure_and_has_no_tbd():
    text = report.render_markdown(fake_results(), bench.CONFIGS, RUN_INFO, None)
    assert "TBD" not in text
    for heading in ["# Position Embeddings Benchmark", "## Test Environment", "## Summary",
                    "## RoPE (Rotary Position Embedding)", "## ALiBi (Attention with Linear Biases)",
                    "### Small Configuration", "### Large Configuration (LLaMA 3 70B)",
                    "### XL Configuration (Long Context)", "## Key Insights", "### Comparison",
                    "## Recommendations", "## Configuration Guidelines", "## Performance Scaling",
                    "### RoPE by Configuration", "### ALiBi by Sequence Length", "## Memory Efficiency",
                    "## Reproduce These Results", "**Heads=64, HeadDim=128, SeqLen=8192, Batch=1**",
                    "**Heads=128, SeqLen=32768, Batch=1**"]:
        assert heading in text, heading
    seed_table = "| Operation | PyTorch (ms) | Triton (ms) | Speedup | Memory (MB) |"
    assert text.count(seed_table) == 8
    assert "| **Total** | 1.60 | 0.800 | 2.00× | 12 / 12 |" in text  # rope large
    assert "| Generate slopes | 6.40 | — | — |" not in text
    assert "faster than PyTorch from medium (hidden_size 8192, seq_len 2048) up, slower at small" in text
    assert "550 GB" in text and "![time against roofline](embeddings_time.png)" in text
    assert "This run had no CUDA GPU" not in text
    # JAX Triton's ms / Triton's burst_ms (1.25 x its ms, both 1.5 or 0.5 x the base time)
    assert "- **JAX Triton against Triton**" in text
    assert "  - Apply rotation: small 0.80×, medium 0.80×, large 0.80×, xl 0.80×" in text
    variants = text[text.index("## RoPE variants"):text.index("## Key Insights")]
    assert "| Variant | Roofline (ms) | PyTorch | Triton | torch.compile | Liger | Triton over PyTorch |" in variants
    assert ("| GQA: k of 8 heads (LLaMA 3 70B, Qwen 2) | 0.320 | 0.800 (2.50×) | 0.400 (1.25×) | 0.800 (2.50×) "
            "| 0.800 (2.50×) | 2.00× |") in variants
    assert ("- **Liger**, 32 of 128 columns rotate (Pythia, GPT-NeoX, Phi); interleaved pairs (RoFormer, Meta's "
            "LLaMA code); 64 of 128 columns in interleaved pairs (GPT-J): Liger-Kernel rotates every column, "
            "in half-split pairs only") in variants


def test_cpu_report_says_plainly_that_triton_needs_a_gpu():
    text = report.render_markdown(fake_results(on_gpu=False), bench.CONFIGS, RUN_INFO, "matplotlib is missing")
    assert "TBD" not in text
    assert "This run had no CUDA GPU" in text
    assert "JAX Triton against Triton" not in text  # no burst times without a GPU
    assert "| **Average Speedup** | not measured: Triton needs a CUDA GPU" in text
    assert "No plots: matplotlib is missing." in text


@pytest.mark.parametrize("speedups, expected", [
    ([2, 3, 4, 5], "faster than PyTorch at every size measured, from small"),
    ([0.5, 0.6, 0.7, 0.9], "slower than PyTorch at every size measured, up to xl"),
    ([0.5, 0.9, 1.5, 2], "faster than PyTorch from large"),
    ([2, 0.5, 0.5, 0.5], "faster than PyTorch at small only"),
])
def test_crossover_is_read_from_the_rows(speedups, expected):
    configs = bench.CONFIGS["rope"]
    rows = [dict(method="rope", config=c.name, op="total", provider=p, ms=1.0 / s if p == "triton" else 1.0,
                 roofline_ms=0.1, peak_mb=None, note=None)
            for c, s in zip(configs, speedups) for p in ("pytorch", "triton")]
    assert report.crossover(report.Rows({"meta": {}, "rows": rows}), "rope", configs).startswith(expected)


def test_outputs_are_written_and_json_matches_the_report(tmp_path):
    results = fake_results()
    written = report.write_outputs(results, bench.CONFIGS, RUN_INFO, tmp_path)
    assert tmp_path / "EMBEDDINGS.md" in written
    assert json.loads((tmp_path / "results" / "latest.json").read_text()) == results
    pytest.importorskip("matplotlib")
    for name in report.PLOTS:
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG")


def test_plots_are_skipped_with_a_note_without_matplotlib(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    report.write_outputs(fake_results(), bench.CONFIGS, RUN_INFO, tmp_path)
    assert not list(tmp_path.glob("*.png"))
    assert "No plots: matplotlib is not installed" in (tmp_path / "EMBEDDINGS.md").read_text()


def test_progress_counts_on_stderr_without_tqdm(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    progress = bench.Progress(2)
    progress.start("rope small apply pytorch")
    progress.finish_row()
    progress.close()
    assert "[1/2] rope small apply pytorch" in capsys.readouterr().err


# --- a tiny run, end to end -----------------------------------------------------------------


def test_tiny_quick_run_on_the_cpu(tmp_path):
    command = [sys.executable, str(BENCHMARKS / "benchmark_embeddings.py"), "--quick",
               "--num_heads", "2", "--head_dim", "8", "--seq_len", "16", "--batch", "1",
               "--providers", "pytorch", "triton", "jax_xla", "--warmup", "1", "--iters", "2",
               "--output", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "results" / "latest.json").read_text())
    report.validate_results(results)
    assert len(results["rows"]) == (4 + 5) * len(report.PROVIDERS)
    by_provider = {}
    for row in results["rows"]:
        by_provider.setdefault(row["provider"], []).append(row)
    assert all(row["ms"] > 0 and row["roofline_ms"] > 0 for row in by_provider["pytorch"] + by_provider["jax_xla"])
    assert all(row["note"] == "not selected (--providers)" for row in by_provider["torch_compile"])
    if not torch.cuda.is_available():
        assert all(row["ms"] is None and "CUDA GPU" in row["note"] for row in by_provider["triton"])
    text = (tmp_path / "EMBEDDINGS.md").read_text()
    assert "TBD" not in text and "### Custom Configuration" in text
    assert "This report: `python benchmarks/benchmark_embeddings.py --quick --num_heads 2" in text
    assert str(tmp_path) not in text
    assert "rope   custom" in done.stdout
