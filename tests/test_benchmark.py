"""The benchmark's CLI, its latest.json shape and rows, the data its report is written from, and
a tiny run on the CPU."""

import copy
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from trinix_bench import analysis, attention, attention_section, blocks, cli, jax_blocks, jax_providers, plots, providers  # noqa: E402
from trinix_bench import harness as harness_module, report, roofline, run, schema, torch_blocks  # noqa: E402
from trinix_bench import torch_providers, variants  # noqa: E402
from trinix_bench.harness import BURST_MS, MIN_BURSTS, Harness, Run  # noqa: E402
from trinix_bench.progress import Progress  # noqa: E402

XL_ALIBI = schema.CONFIGS["alibi"][-1]
OPERATION_CONFIGS = schema.operation_configs(schema.CONFIGS)


# --- CLI ----------------------------------------------------------------------------------


def test_defaults_are_the_original_reports():
    args = cli.parse_args([])
    assert (args.warmup, args.iters, args.dtype) == (10, 100, "float16")
    assert args.methods == ["rope", "alibi", "alibi_attention", "llama_block", "bloom_block"]
    assert args.frameworks == ["torch", "jax"]
    assert args.providers == [*schema.PROVIDERS, "flex", "sdpa_no_bias", "triton_no_alibi", "sdpa_bias",
                              "jax_cudnn_bias", "jax_xla_bias"]
    configs = cli.selected_configs(args)
    assert [(c.name, c.heads, c.head_dim, c.seq_len, c.batch) for c in configs["rope"]] == [
        ("small", 32, 64, 512, 4), ("medium", 64, 128, 2048, 2), ("large", 64, 128, 8192, 1),
        ("xl", 128, 128, 32768, 1)]
    assert [(c.name, c.heads, c.seq_len, c.batch) for c in configs["alibi"]] == [
        ("small", 32, 512, 4), ("medium", 64, 2048, 2), ("large", 128, 8192, 1), ("xl", 128, 32768, 1)]
    assert [(c.name, c.heads, c.head_dim, c.seq_len, c.batch) for c in configs["llama_block"]] == [
        ("s8192b1", 32, 128, 8192, 1), ("s2048b8", 32, 128, 2048, 8)]
    assert [(c.name, c.seq_len, c.batch) for c in configs["bloom_block"]] == [("s2048b1", 2048, 1), ("s8192b1", 8192, 1)]
    assert [(c.name, c.batch, c.heads, c.seq_q, c.seq_len, c.head_dim) for c in configs["alibi_attention"]] == [
        ("decode", 16, 64, 1, 8192, 128), ("medium", 2, 64, None, 2048, 128), ("large", 1, 128, None, 8192, 128),
        ("xl", 1, 128, None, 32768, 128)]


def test_the_blocks_run_alone_or_not_at_all():
    """--methods picks the blocks alone; a custom configuration runs no block; --quick runs the first."""
    alone = cli.selected_configs(cli.parse_args(["--methods", "llama_block", "bloom_block"]))
    assert alone == {m: schema.BLOCK_CONFIGS[m] for m in ("llama_block", "bloom_block")}
    assert set(cli.selected_configs(cli.parse_args(["--seq_len", "64"]))) == {"rope", "alibi", "alibi_attention"}
    quick = cli.selected_configs(cli.parse_args(["--quick", "--methods", "bloom_block"]))
    assert quick == {"bloom_block": schema.BLOCK_CONFIGS["bloom_block"][:1]}


def test_a_cpu_run_writes_into_its_own_folder_unless_asked():
    """One rule: a GPU run keeps the committed layout, a CPU run writes benchmarks/results/cpu/."""
    assert cli.parse_args([]).output is None
    cpu = BENCHMARKS / "results" / "cpu"
    assert report.layout(None, gpu=False) == (cpu, cpu / "latest.json")
    assert report.layout(None, gpu=True) == (BENCHMARKS, BENCHMARKS / "results" / "latest.json")
    out = Path("elsewhere")
    assert cli.parse_args(["--output", "elsewhere"]).output == out
    assert report.layout(out, gpu=True) == (out, out / "results" / "latest.json")
    assert report.layout(out, gpu=False) == (out, out / "latest.json")


def test_custom_configuration_from_the_original_flags():
    args = cli.parse_args(["--num_heads", "64", "--head_dim", "128", "--seq_len", "8192",
                             "--methods", "rope", "alibi", "--dtype", "bfloat16"])
    configs = cli.selected_configs(args)
    assert configs["rope"] == [schema.Config("custom", 64, 8192, 1, 128)]
    assert configs["alibi"] == [schema.Config("custom", 64, 8192, 1)]
    assert cli.selected_configs(cli.parse_args(["--seq_len", "64", "--methods", "alibi_attention"])) == {
        "alibi_attention": [schema.Config("custom", 32, 64, 1, 128)]}
    assert args.dtype == "bfloat16"


def test_quick_mode_runs_small_configurations_with_few_iterations():
    args = cli.parse_args(["--quick", "--methods", "alibi"])
    assert (args.warmup, args.iters) == (cli.QUICK_WARMUP, cli.QUICK_ITERS)
    assert [c.name for c in cli.selected_configs(args)["alibi"]] == ["small"]
    assert cli.parse_args(["--quick", "--iters", "7"]).iters == 7


@pytest.mark.parametrize("argv", [["--head_dim", "63"], ["--dtype", "int8"], ["--iters", "0"],
                                  ["--methods", "xpos"], ["--providers", "cuda"]])
def test_bad_arguments_are_refused(argv, capsys):
    with pytest.raises(SystemExit):
        cli.parse_args(argv)


# --- bytes and fitting ----------------------------------------------------------------------


def test_roofline_bytes():
    xl = schema.CONFIGS["rope"][-1]
    qk = 2 * 32768 * 128 * 128 * 2
    assert roofline.op_bytes("rope", xl, "total", "float16") == 2 * qk
    assert roofline.op_bytes("rope", xl, "apply", "float16") == 2 * qk + 2 * 32768 * 128 * 2
    assert roofline.op_bytes("alibi", XL_ALIBI, "bias", "float16") == 128 * 32768**2 * 4
    assert roofline.op_bytes("alibi", XL_ALIBI, "add_to_scores", "float16") == 2 * 128 * 32768**2 * 2


def test_a_row_too_big_for_memory_says_its_size_instead_of_allocating():
    x = torch_providers.TorchInputs(XL_ALIBI, "float16", torch.device("cpu"))
    harness = Harness(torch.device("cpu"), warmup=1, iters=1)
    provider = torch_providers.OriginalTorch(x, "alibi")
    for op, tensor in [("bias", "bias (1, 128, 32768, 32768) float32 alone is 550 GB"),
                       ("add_to_scores", "scores (1, 128, 32768, 32768) float16 alone is 275 GB")]:
        ms, burst_ms, peak, note = run.measure(harness, provider, "alibi", XL_ALIBI, op, "float16")
        assert ms is None and burst_ms is None and peak is None
        assert note.startswith("does not fit") and tensor in note
    assert "scores" not in x.__dict__  # nothing was allocated


@pytest.mark.parametrize("provider, make_inputs", [
    (torch_providers.TrinixTorch, lambda config: torch_providers.TorchInputs(config, "float32", torch.device("cpu"))),
    (jax_providers.TrinixJax, lambda config: jax_providers.JaxInputs(config, "float32")),
])
def test_trinix_rows_call_the_api_as_it_is(provider, make_inputs, monkeypatch):
    """The trinix providers' calls, through Triton's interpreter on tiny shapes."""
    monkeypatch.setattr(provider, "backend", "interpret")
    harness = Harness(torch.device("cpu"), warmup=1, iters=1)
    for method, config in [("rope", schema.Config("tiny", 2, 16, 1, 8)), ("alibi", schema.Config("tiny", 2, 16, 1))]:
        chosen = provider(make_inputs(config), method)
        for op in schema.METHODS[method]["ops"]:
            ms, burst_ms, _, note = run.measure(harness, chosen, method, config, op, "float32")
            assert ms is not None and ms > 0, (method, op, note)
            assert burst_ms is None  # bursts only on a GPU


VARIANT_BASE = schema.Config("tiny", 2, 8, 1, 128)  # head_dim 128, as the variants assume


def test_rope_variants_are_checked_then_timed():
    """Every variant's rows: PyTorch and trinix (through Triton's interpreter) checked and timed,
    one roofline a variant, Liger's reason where it has no such rotation."""
    harness = Harness(torch.device("cpu"), warmup=1, iters=1)
    rows = variants.variant_rows(harness, 10.0, VARIANT_BASE, ["pytorch", "liger", "triton"], backend="interpret")
    assert [(r["config"], r["provider"]) for r in rows] == [
        (f"tiny-{v}", p) for v in schema.ROPE_VARIANTS for p in schema.VARIANT_PROVIDERS]
    for row in rows:
        schema.validate_results({"meta": fake_results()["meta"], "rows": [row]})
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
        assert liger["tiny-gqa"] == providers.NEEDS_GPU
    assert {r["note"] for r in rows if r["provider"] == "torch_compile"} == {"not selected (--providers)"}


def _run(argv: list[str]) -> dict:
    args = cli.parse_args(argv)
    return run.run_benchmark(args, cli.selected_configs(args))


def test_variants_follow_the_original_configurations_but_not_quick_runs(monkeypatch):
    tiny = [schema.Config("small", 2, 8, 1, 128), schema.Config("large", 2, 8, 1, 128)]
    monkeypatch.setitem(schema.CONFIGS, "rope", tiny)
    argv = ["--methods", "rope", "--frameworks", "torch", "--providers", "pytorch", "--warmup", "1", "--iters", "1"]
    results = _run(argv)
    assert list(dict.fromkeys(r["config"] for r in results["rows"])) == [
        "small", "large", *(f"large-{v}" for v in schema.ROPE_VARIANTS)]
    assert all(r["ms"] > 0 for r in results["rows"] if r["provider"] == "pytorch")
    results = _run([*argv, "--quick"])
    assert {r["config"] for r in results["rows"]} == {"small"}


def test_a_wrong_rope_variant_is_not_timed(monkeypatch):
    """A provider whose result differs from the PyTorch rotation gets no time, but a note."""
    import trinix.torch.rope as trinix_rope

    real = trinix_rope.apply_rotary_pos_emb

    def ignores_interleaved(*args, interleaved=False, **kwargs):
        return real(*args, **kwargs)

    monkeypatch.setattr(trinix_rope, "apply_rotary_pos_emb", ignores_interleaved)
    harness = Harness(torch.device("cpu"), warmup=1, iters=1)
    rows = variants.variant_rows(harness, 10.0, VARIANT_BASE, ["triton"], backend="interpret")
    triton = {r["config"]: r for r in rows if r["provider"] == "triton"}
    for variant in ("interleaved", "gptj"):
        assert triton[f"tiny-{variant}"]["ms"] is None
        assert triton[f"tiny-{variant}"]["note"].startswith("wrong: relative error")
    assert triton["tiny-gqa"]["ms"] > 0


def test_bursts_last_about_burst_ms_and_are_timed_whole():
    """A JAX row's calls run in bursts of equal length, sized from a first estimate so that a
    burst lasts about BURST_MS, and at least MIN_BURSTS of them are timed."""
    harness = Harness(torch.device("cpu"), warmup=1, iters=5)
    harness.cuda = True  # the burst path; nothing in it touches a GPU
    started, bursts = [0], []

    def start():
        time.sleep(0.002)
        started[0] += 1
        return started[0]

    def wait(out):
        bursts.append(out - sum(bursts))

    ms = harness.median_ms("jax", Run(start, wait))
    timed = bursts[2:]  # after the warm-up call and the 3-call estimate
    assert len(timed) >= MIN_BURSTS and len(set(timed)) == 1
    assert 1 <= timed[0] <= BURST_MS / 2  # each call takes at least 2 ms
    assert ms >= 2.0


def test_providers_that_cannot_run_here_say_why():
    config = schema.CONFIGS["rope"][0]
    x = torch_providers.TorchInputs(config, "float16", torch.device("cpu"))
    with pytest.raises(providers.Unavailable, match="Liger-Kernel has no ALiBi"):
        torch_providers.Liger(x, "alibi")
    if not torch.cuda.is_available():
        with pytest.raises(providers.Unavailable, match="needs a CUDA GPU"):
            torch_providers.TrinixTorch(x, "rope")


# --- whole blocks ---------------------------------------------------------------------------

TINY_BLOCK = schema.Config("tiny", 4, 32, 2, 16)  # 4 heads (1 kv head in the Llama block), head_dim 16


def _tiny_block_rows(method, framework, providers, backend="interpret"):
    harness = blocks.block_harness(torch.device("cpu"), warmup=1, iters=2)
    return blocks.block_rows(harness, method, TINY_BLOCK, framework, dtype="float32", backend=backend,
                             providers=providers)


@pytest.mark.parametrize("method, framework, providers, backend", [
    ("llama_block", "torch", ["eager", "eager_trinix"], "interpret"),
    ("llama_block", "jax", ["jax", "jax_trinix"], "xla"),
    ("bloom_block", "torch", ["eager", "sdpa_bias", "trinix"], "interpret"),
    ("bloom_block", "jax", ["jax_cudnn_bias", "jax_trinix"], "xla"),
])
def test_block_variants_agree_then_are_timed(method, framework, providers, backend):
    """Each variant matches its framework's plain block in float32 (the output, and the gradients of
    x and every weight), trinix's torch blocks through Triton's interpreter, its JAX ones through
    its XLA ops (the interpreter in JAX is slower, and tested with the bindings); then it is timed."""
    rows = _tiny_block_rows(method, framework, providers, backend)
    names = blocks.framework_providers(method, framework)
    assert [(r["op"], r["provider"]) for r in rows] == [(op, p) for p in names for op in schema.BLOCK_OPS]
    for row in rows:
        schema.validate_results({"meta": fake_results()["meta"], "rows": [row]})
        if row["provider"] in providers:
            assert row["ms"] > 0, row
            assert row["note"] == (f"trinix backend {backend!r}" if "trinix" in row["provider"] else None), row
        else:
            assert row["ms"] is None and row["note"] == "not selected"


def test_block_providers_are_timed_in_alternating_turns():
    """After its warm-up, each provider is timed once a turn (off a GPU), the order reversed every
    other turn; one that raises is a failure note and is not called again."""
    order = []

    def run_of(name, fail_at=None):
        def start():
            order.append(name)
            if len(order) == fail_at:
                raise torch.OutOfMemoryError("CUDA out of memory")
        return Run(start, lambda out: out)

    timing = blocks.block_harness(torch.device("cpu"), warmup=1, iters=4)
    times, failures = blocks.timed_in_turns(timing, "torch", {"a": run_of("a"), "b": run_of("b")})
    # warm-up and the one-call estimate, then the turns: a b, b a, a b, b a
    assert order == ["a", "a", "b", "b", "a", "b", "b", "a", "a", "b", "b", "a"]
    assert failures == {} and [len(t) for t in times.values()] == [4, 4]
    order.clear()
    times, failures = blocks.timed_in_turns(timing, "torch", {"a": run_of("a"), "b": run_of("b", fail_at=7)})
    assert order == ["a", "a", "b", "b", "a", "b", "b", "a", "a", "a"]
    assert list(times) == ["a"] and len(times["a"]) == 4
    assert failures == {"b": "does not fit: out of memory (OutOfMemoryError: CUDA out of memory)"}


def test_compiled_blocks_trace_whole_with_auto(monkeypatch):
    """torch.compile, fullgraph, of both Llama blocks, trinix's with backend="auto" (Dynamo alone
    here: Inductor's compilation is the GPU run's); FlexAttention's forward (its backward needs a
    GPU)."""
    monkeypatch.setattr(torch_blocks, "_compiled",
                        lambda fn: torch.compile(fn, dynamic=False, fullgraph=True, backend="eager"))
    rows = _tiny_block_rows("llama_block", "torch", ["compile", "compile_trinix"], backend="auto")
    for row in (r for r in rows if r["provider"].startswith("compile")):
        assert row["ms"] > 0, row
        assert row["note"] == ("trinix backend 'auto': torch (compile)" if row["provider"] == "compile_trinix"
                               else None), row
    rows = {r["op"]: r for r in _tiny_block_rows("bloom_block", "torch", ["flex"]) if r["provider"] == "flex"}
    assert rows["fwd"]["ms"] > 0
    if not torch.cuda.is_available():
        assert "FlexAttention does not support backward on CPU" in rows["fwd_bwd"]["note"]


def test_a_wrong_block_is_not_timed_but_the_baseline_is(monkeypatch, capsys):
    monkeypatch.setitem(blocks.TOLERANCE, "float32", -1.0)  # every block is now "wrong"
    rows = {(r["op"], r["provider"]): r for r in _tiny_block_rows("llama_block", "torch", ["eager", "eager_trinix"],
                                                                    backend="torch")}
    for op in schema.BLOCK_OPS:
        assert rows[op, "eager"]["ms"] > 0
        assert "against its own math in float32 (timed: the baseline)" in rows[op, "eager"]["note"]
        assert rows[op, "eager_trinix"]["ms"] is None
        assert rows[op, "eager_trinix"]["note"].startswith("wrong: relative error")
    assert "llama_block tiny fwd eager_trinix: wrong" in capsys.readouterr().err


def test_a_block_out_of_memory_is_a_row_saying_so(monkeypatch):
    def out_of_memory(*args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 4.00 GiB")

    monkeypatch.setattr(torch_blocks.TorchBlock, "call", out_of_memory)
    rows = _tiny_block_rows("bloom_block", "torch", ["sdpa_bias"], backend="torch")
    assert {r["note"] for r in rows if r["provider"] == "sdpa_bias"} == {
        "does not fit: out of memory (OutOfMemoryError: CUDA out of memory. Tried to allocate 4.00 GiB)"}
    monkeypatch.setattr(torch_blocks.TorchBlock, "reference", out_of_memory)
    rows = _tiny_block_rows("bloom_block", "torch", ["sdpa_bias"], backend="torch")
    assert {r["note"] for r in rows} == {"not run: its float32 reference does not fit: out of memory "
                                         "(OutOfMemoryError: CUDA out of memory. Tried to allocate 4.00 GiB)"}


def test_jax_attention_is_xlas_where_cudnns_does_not_compile():
    import jax
    import jax.numpy as jnp

    implementation, note = jax_blocks.attention_implementation((1, 8, 2, 64), (1, 8, 2, 64), jnp.dtype("bfloat16"),
                                                               None)
    if jax.default_backend() == "cpu":
        assert implementation is None and note.startswith("attention by XLA: cuDNN's does not compile here")


def test_blocks_need_a_gpu_in_a_run(tmp_path):
    """Without one, every block row says so; the report has the blocks' section and nothing else
    measured."""
    if torch.cuda.is_available():
        pytest.skip("a GPU runs the blocks")
    results = _run(["--methods", "llama_block", "--frameworks", "torch", "--warmup", "1", "--iters", "1"])
    owners = schema.BLOCKS["llama_block"]["providers"]
    assert {(r["provider"], r["note"]) for r in results["rows"]} == {
        (p, providers.NEEDS_GPU if owner == "torch" else "not selected (--frameworks)") for p, (owner, _) in owners.items()}
    console = report.console_table(results)
    assert "pytorch ms" not in console and f"llama_block  s8192b1  fwd  eager  {providers.NEEDS_GPU}" in console
    report.write_outputs(results, {"llama_block": schema.BLOCK_CONFIGS["llama_block"]}, RUN_INFO, tmp_path)
    text = (tmp_path / "EMBEDDINGS.md").read_text()
    assert "## What a model gains" in text and providers.NEEDS_GPU in text
    assert "## Summary" not in text and "Plots:" not in text and not list(tmp_path.glob("*.png"))


def test_a_run_with_a_wrong_row_fails_after_writing_its_report(tmp_path, monkeypatch, capsys):
    results = {"meta": fake_results()["meta"], "rows": fake_block_rows()}
    results["rows"][1].update(ms=None, note="wrong: relative error 0.3 against the float32 reference (tolerance 0.05)")
    monkeypatch.setattr(cli, "run_benchmark", lambda args, configs: results)
    assert cli.main(["--methods", "llama_block", "bloom_block", "--output", str(tmp_path)]) == 1
    assert "wrong: relative error 0.3" in (tmp_path / "EMBEDDINGS.md").read_text()
    assert "llama_block s8192b1 fwd eager_trinix: wrong: relative error 0.3" in capsys.readouterr().err


def fake_block_rows() -> list[dict]:
    """Rows of every block, configuration, op and provider: each provider 1 ms slower than the one
    before it; SDPA's bias too big at seq 8192."""
    rows = []
    for method, configs in schema.BLOCK_CONFIGS.items():
        for config in configs:
            for op in schema.BLOCK_OPS:
                for i, provider in enumerate(schema.BLOCKS[method]["providers"]):
                    ms, note = 2.0 + i, "trinix backend 'auto': triton (eager)" if "trinix" in provider else None
                    if provider == "sdpa_bias" and config.seq_len == 8192:
                        ms, note = None, "does not fit: out of memory (OutOfMemoryError: CUDA out of memory.)"
                    rows.append(schema.row(method, config.name, op, provider, ms=ms,
                                           peak_mb=None if ms is None else 100.0 * ms, note=note))
    return rows


def test_the_blocks_section_comes_first_and_carries_every_block_row():
    results = fake_results()
    results["rows"] += fake_block_rows()
    schema.validate_results(results)
    rows = analysis.Rows(results)
    text = report.render_markdown(results, {**schema.CONFIGS, **schema.BLOCK_CONFIGS}, RUN_INFO, None,
                                  "results/latest.json")
    assert text.index("## What a model gains") < text.index("## Test Environment") < text.index("## Summary")
    lines = [[cell.strip() for cell in line.strip("|").split("|")] for line in text.splitlines()
             if line.startswith("|")]
    for row in fake_block_rows():
        method, config, op, provider = row["method"], row["config"], row["op"], row["provider"]
        framework, what = schema.BLOCKS[method]["providers"][provider]
        baseline = rows.ms(method, config, op, schema.BLOCKS[method]["baseline"][framework])
        expected = [analysis.fmt_ms(row["ms"]), analysis.fmt_x(baseline / row["ms"] if row["ms"] else None),
                    analysis.fmt_amount(row["peak_mb"])]
        assert any(cells[1] == schema.BLOCK_OPS[op] and cells[2] == f"{what} (`{provider}`)" and cells[0].startswith(config)
                   and cells[3:] == expected for cells in lines), row
        if row["note"]:
            assert row["note"] in text
    # A run of the blocks alone: their section, no operation's.
    alone = {"meta": results["meta"], "rows": fake_block_rows()}
    text = report.render_markdown(alone, schema.BLOCK_CONFIGS, RUN_INFO, "this run measured no operation",
                                  "results/latest.json")
    assert "## What a model gains" in text and "## Summary" not in text


@pytest.mark.parametrize("edit, message", [(dict(op="apply"), "not an op of llama_block"),
                                           (dict(provider="pytorch"), "provider must be one of")])
def test_block_rows_are_checked_by_the_schema(edit, message):
    results = {"meta": fake_results()["meta"], "rows": fake_block_rows()}
    schema.validate_results(results)
    results["rows"][0].update(edit)
    with pytest.raises(ValueError, match=message):
        schema.validate_results(results)


# --- latest.json ----------------------------------------------------------------------------


def fake_results(on_gpu: bool = True) -> dict:
    """Rows for every configuration, op and provider of RoPE and ALiBi: Triton slower than PyTorch
    at small, faster above; the ALiBi xl bias and scores too big, as on an H200."""
    rows = []
    for method, configs in OPERATION_CONFIGS.items():
        for size, config in enumerate(configs):
            for op in schema.METHODS[method]["ops"]:
                for provider in schema.PROVIDERS:
                    ms = 0.1 * 4.0**size
                    if provider in ("triton", "jax_triton"):
                        ms *= 1.5 if size == 0 else 0.5
                    note = None
                    if not on_gpu and provider in ("triton", "jax_triton", "liger"):
                        ms, note = None, providers.NEEDS_GPU
                    if method == "alibi" and config.name == "xl" and op != "slopes":
                        ms, note = None, "does not fit: needs about 825 GB (bias (1, 128, 32768, 32768) float32 alone is 550 GB), 140 GB free on the device"
                    burst_ms = 1.25 * ms if on_gpu and provider == "triton" and ms is not None else None
                    rows.append(dict(method=method, config=config.name, op=op, provider=provider,
                                     ms=ms, burst_ms=burst_ms, roofline_ms=0.01 * 4.0**size,
                                     peak_mb=None if ms is None else 12.5, note=note))
    for variant in schema.ROPE_VARIANTS:
        for provider in schema.VARIANT_PROVIDERS:
            ms, note = (0.4 if provider == "triton" else 0.8), None
            if provider == "liger" and variant in ("partial", "interleaved", "gptj"):
                ms, note = None, "Liger-Kernel rotates every column, in half-split pairs only"
            if not on_gpu and provider in ("triton", "liger"):
                ms, note = None, providers.NEEDS_GPU
            rows.append(dict(method="rope", config=f"large-{variant}", op="apply", provider=provider, ms=ms,
                             burst_ms=None, roofline_ms=0.32, peak_mb=None, note=note))
    gpu = "NVIDIA H200" if on_gpu else "none (CPU only: x86_64, 2 cores)"
    return {"meta": {"gpu": gpu, "dtype": "float16", "date": "2026-11-29", "copy_gbps": 4249.0,
                     "versions": {"torch": "2.11.0", "triton": "3.6.0"}},
            "rows": rows}


def test_json_shape_is_accepted_and_survives_a_round_trip():
    results = fake_results()
    schema.validate_results(results)
    schema.validate_results(json.loads(json.dumps(results)))


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
        schema.validate_results(_broken(edit))


# --- the data the report is written from ---------------------------------------------------

RUN_INFO = {"warmup": 10, "iters": 100, "command": "python benchmarks/benchmark_embeddings.py"}


def test_ratios_are_of_rows_of_the_same_run():
    results = fake_results()
    rows = analysis.Rows(results)
    by_key = {(r["method"], r["config"], r["op"], r["provider"]): r for r in results["rows"]}
    for (method, config, op, provider), row in by_key.items():
        pytorch = by_key[method, config, op, "pytorch"]
        if row["ms"] is None or pytorch["ms"] is None:
            assert rows.speedup(method, config, op, provider) is None
            continue
        assert rows.speedup(method, config, op, provider) == pytest.approx(pytorch["ms"] / row["ms"])
        ratio = row["ms"] / pytorch["roofline_ms"]
        assert rows.over_roofline(method, config, op, provider) == pytest.approx(ratio)
        assert rows.gbps(method, config, op, provider) == pytest.approx(results["meta"]["copy_gbps"] / ratio)
    assert rows.speedup("rope", "large", "total", "triton") == pytest.approx(2.0)
    assert rows.speedup("rope", "small", "total", "triton") == pytest.approx(1 / 1.5)
    assert rows.over_roofline("rope", "large-gqa", "apply", "pytorch") == pytest.approx(2.5)
    assert rows.speedup("rope", "large-gqa", "apply", "triton") == pytest.approx(2.0)
    # JAX Triton's ms / Triton's burst_ms (1.25 x its ms, both 1.5 or 0.5 x the base time)
    for method, configs in OPERATION_CONFIGS.items():
        for config in configs:
            for op in schema.METHODS[method]["ops"]:
                expected = None if by_key[method, config.name, op, "jax_triton"]["ms"] is None else 0.8
                assert rows.jax_over_torch(method, config.name, op) == pytest.approx(expected)
    measured = analysis.speedups(rows, OPERATION_CONFIGS)
    assert {(m, c, op) for m, c, op, _ in measured} == {
        key[:3] for key, row in by_key.items() if key[3] == "triton" and row["ms"] is not None
        and not key[1].startswith("large-")}


def test_a_cpu_run_has_no_kernel_ratios():
    rows = analysis.Rows(fake_results(on_gpu=False))
    assert analysis.speedups(rows, OPERATION_CONFIGS) == []
    assert all(rows.jax_over_torch(m, c.name, op) is None
               for m, cs in OPERATION_CONFIGS.items() for c in cs for op in schema.METHODS[m]["ops"])
    assert analysis.why_not(rows, "rope", schema.CONFIGS["rope"], "total", "triton") == providers.NEEDS_GPU


def _section_tables(text: str, method: str) -> list[list[list[str]]]:
    """Per configuration of `method`, the cells of its tables' lines (not those of its targets)."""
    section = text[text.index(f"## {schema.METHODS[method]['title']}"):]
    section = section[:section.index("\n## ")]
    return [[[cell.strip() for cell in line.strip("|").split("|")]
             for line in chunk.splitlines() if line.startswith("|")]
            for chunk in section.split("\n### ")[1:] if not chunk.startswith("Targets")]


@pytest.mark.parametrize("on_gpu", [True, False])
def test_report_tables_carry_every_rows_numbers(on_gpu):
    """Each configuration's table of every provider holds each row's ms and time / roofline."""
    results = fake_results(on_gpu)
    rows = analysis.Rows(results)
    text = report.render_markdown(results, schema.CONFIGS, RUN_INFO, None, "results/latest.json")
    assert "TBD" not in text
    for method, configs in OPERATION_CONFIGS.items():
        tables = _section_tables(text, method)
        assert len(tables) == len(configs)
        for config, lines in zip(configs, tables):
            for op in schema.METHODS[method]["ops"]:
                expected = [analysis.row_label(method, op), analysis.fmt_ms(rows.roofline(method, config.name, op))]
                for provider in schema.PROVIDERS:
                    ms = rows.ms(method, config.name, op, provider)
                    expected.append("—" if ms is None else f"{analysis.fmt_ms(ms)} "
                                    f"({analysis.fmt_x(rows.over_roofline(method, config.name, op, provider))})")
                assert expected in lines, (method, config.name, op)
    for row in results["rows"]:  # why a row has no time reaches the report
        if row["ms"] is None:
            assert row["note"] in text, row
    for name in plots.PLOTS:
        assert f"({name})" in text


def test_the_committed_report_is_written_from_the_committed_rows():
    """benchmarks/EMBEDDINGS.md's tables and numbers, written again from results/latest.json."""
    results = json.loads((BENCHMARKS / "results" / "latest.json").read_text())
    schema.validate_results(results)
    names = {(r["method"], r["config"]) for r in results["rows"]}
    configs = {m: [c for c in cs if (m, c.name) in names] for m, cs in schema.CONFIGS.items()}
    files = report.layout(BENCHMARKS, schema.on_gpu(results["meta"]))
    run = results["meta"].get("run", {})  # how the first run measured, where it says (--render-from)
    run_info = dict(RUN_INFO, **{name: run[name] for name in ("warmup", "iters") if name in run})
    text = report.render_markdown(results, configs, run_info, None, files.json.relative_to(files.folder).as_posix())
    committed = (BENCHMARKS / "EMBEDDINGS.md").read_text()

    def tables(markdown):
        return [line for line in markdown.splitlines() if line.startswith("|")]

    def numbers(markdown):
        return re.findall(r"\d[\d,.]*", markdown)

    assert tables(text) == tables(committed)
    assert numbers(text) == numbers(committed)


@pytest.mark.parametrize("speedups, expected", [
    ([2, 3, 4, 5], "faster than PyTorch at every size measured, from small"),
    ([0.5, 0.6, 0.7, 0.9], "slower than PyTorch at every size measured, up to xl"),
    ([0.5, 0.9, 1.5, 2], "faster than PyTorch from large"),
    ([2, 0.5, 0.5, 0.5], "faster than PyTorch at small only"),
])
def test_crossover_is_read_from_the_rows(speedups, expected):
    configs = schema.CONFIGS["rope"]
    rows = [dict(method="rope", config=c.name, op="total", provider=p, ms=1.0 / s if p == "triton" else 1.0,
                 roofline_ms=0.1, peak_mb=None, note=None)
            for c, s in zip(configs, speedups) for p in ("pytorch", "triton")]
    assert analysis.crossover(analysis.Rows({"meta": {}, "rows": rows}), "rope", configs).startswith(expected)


@pytest.mark.parametrize("on_gpu, json_path", [(True, "results/latest.json"), (False, "latest.json")])
def test_outputs_are_written_where_the_layout_says(tmp_path, on_gpu, json_path):
    results = fake_results(on_gpu)
    written = report.write_outputs(results, schema.CONFIGS, RUN_INFO, tmp_path)
    assert written[:2] == [tmp_path / "EMBEDDINGS.md", tmp_path / json_path]
    assert json.loads((tmp_path / json_path).read_text()) == results
    assert f"]({json_path})" in (tmp_path / "EMBEDDINGS.md").read_text()  # the report links its rows
    pytest.importorskip("matplotlib")
    for name in plots.PLOTS:
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG")


def test_plots_are_skipped_with_a_note_without_matplotlib(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    written, note = plots.write_plots(fake_results(), schema.CONFIGS, tmp_path)
    assert written == [] and "matplotlib is not installed" in note
    report.write_outputs(fake_results(), schema.CONFIGS, RUN_INFO, tmp_path)
    assert not list(tmp_path.glob("*.png"))
    assert note in (tmp_path / "EMBEDDINGS.md").read_text()


def test_progress_counts_on_stderr_without_tqdm(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    progress = Progress(2)
    progress.start("rope small apply pytorch")
    progress.finish_row()
    progress.close()
    assert "[1/2] rope small apply pytorch" in capsys.readouterr().err


# --- a tiny run, end to end -----------------------------------------------------------------


def test_tiny_quick_run_on_the_cpu(tmp_path):
    command = [sys.executable, str(BENCHMARKS / "benchmark_embeddings.py"), "--quick",
               "--num_heads", "2", "--head_dim", "8", "--seq_len", "16", "--batch", "1",
               "--providers", "pytorch", "triton", "jax_xla", "sdpa_no_bias", "--warmup", "1",
               "--iters", "2", "--output", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(report.layout(tmp_path, torch.cuda.is_available()).json.read_text())
    schema.validate_results(results)
    assert len(results["rows"]) == (4 + 5) * len(schema.PROVIDERS) + 4 * len(schema.ATTENTION_PROVIDERS)
    by_provider = {}
    for row in results["rows"]:
        by_provider.setdefault(row["provider"], []).append(row)
    assert all(row["ms"] > 0 and row["roofline_ms"] > 0 for row in by_provider["pytorch"] + by_provider["jax_xla"])
    unselected = by_provider["torch_compile"] + by_provider["flex"]
    assert all(row["note"] == "not selected (--providers)" for row in unselected)
    if not torch.cuda.is_available():
        assert all(row["ms"] is None and "CUDA GPU" in row["note"] for row in by_provider["triton"])
    for row in by_provider["sdpa_no_bias"]:  # attention, timed on any device
        assert row["ms"] > 0 and row["tflops"] > 0 and row["roofline_ms"] is None, row
    text = (tmp_path / "EMBEDDINGS.md").read_text()
    custom = schema.Config("custom", 2, 16, 1, 8)
    assert "TBD" not in text and f"**{analysis.dims('rope', custom)}**" in text
    assert "## Attention with ALiBi" in text
    assert "### Custom: (batch, heads, queries, keys, head_dim) = (1, 2, 16, 16, 8)" in text
    assert "This report: `python benchmarks/benchmark_embeddings.py --quick --num_heads 2" in text
    assert str(tmp_path) not in text
    # The console table: a column per provider with its unit, a line per (method, config, op).
    lines = done.stdout.splitlines()
    header = next(line.split("  ") for line in lines if line.startswith("method"))
    assert {"roofline ms", *(f"{p} ms" for p in schema.every_provider())} <= {cell.strip() for cell in header}
    table = [line.split() for line in lines if line.split()[:2] in (["rope", "custom"], ["alibi", "custom"],
                                                                     ["alibi_attention", "custom"])]
    assert [cells[2] for cells in table] == [op for method in schema.METHODS for op in schema.METHODS[method]["ops"]]
    assert any(line.startswith("—:") for line in lines)
    if not torch.cuda.is_available():
        assert any(line.startswith("CPU run:") for line in lines)


# --- attention with ALiBi -------------------------------------------------------------------

ATTENTION = schema.ATTENTION
ATTENTION_CONFIGS = {c.name: c for c in schema.CONFIGS[ATTENTION]}
# Tiny shapes for the interpreter (a few programs a launch): a square one and one decoding query.
TINY_ATTENTION = [schema.Config("tiny", 2, 32, 1, 16), schema.Config("tiny-decode", 2, 32, 2, 16, seq_q=1)]
CPU = torch.device("cpu")


def test_only_attention_can_be_selected():
    assert cli.selected_configs(cli.parse_args(["--methods", "alibi_attention"])) == {
        ATTENTION: schema.CONFIGS[ATTENTION]}
    assert cli.selected_configs(cli.parse_args(["--methods", "alibi_attention", "--quick"])) == {
        ATTENTION: [ATTENTION_CONFIGS["decode"]]}
    assert cli.parse_args(["--providers", "flex", "sdpa_no_bias"]).providers == ["flex", "sdpa_no_bias"]


def test_attention_flops_tflops_and_roofline():
    medium, decode = ATTENTION_CONFIGS["medium"], ATTENTION_CONFIGS["decode"]
    pairs = 2048 * 2048
    assert attention.attention_flops(medium, "fwd") == 4 * 2 * 64 * pairs * 128
    causal = pairs - 2048 * 2047 // 2  # the diagonal and below: 2048 * 2049 / 2
    assert attention.attention_flops(medium, "fwd_causal") == 4 * 2 * 64 * causal * 128
    assert attention.attention_flops(medium, "fwd_bwd_causal") == 3.5 * 4 * 2 * 64 * causal * 128
    assert attention.attention_flops(decode, "fwd_causal") == 4 * 16 * 64 * 8192 * 128  # one query, every key
    assert attention.tflops(medium, "fwd", 0.5) == pytest.approx(4 * 2 * 64 * pairs * 128 / 0.5e-3 / 1e12)
    assert attention.tflops(medium, "fwd", None) is None
    kv = 2 * 16 * 8192 * 64 * 128 * 2
    assert attention.kv_bytes(decode, "float16") == kv
    assert attention.roofline_ms(decode, "float16", 3000.0) == pytest.approx(kv / 3000e9 * 1e3)
    assert attention.roofline_ms(medium, "float16", 3000.0) is None
    assert attention.ops_at(decode) == ["fwd_causal"]
    assert attention.ops_at(medium) == schema.METHODS[ATTENTION]["ops"]


def _attention_row(op="fwd", provider="triton", **fields):
    return schema.row(ATTENTION, "medium", op, provider, **{"ms": 1.0, "tflops": 500.0, **fields})


@pytest.mark.parametrize("row, message", [
    (_attention_row(), None),
    (_attention_row("fwd_bwd_causal", "jax_cudnn_bias", ms=None, tflops=None, note="failed: out of memory"), None),
    ({k: v for k, v in _attention_row().items() if k != "tflops"}, "exactly the keys"),
    ({**_attention_row(), "tflops": "500"}, "tflops"),
    (_attention_row(provider="pytorch"), "provider"),
    (_attention_row(op="apply"), "not an op"),
    (schema.row("rope", "large", "apply", "flex", ms=1.0), "provider"),
    (schema.row("rope", "large", "apply", "triton", ms=1.0, tflops=1.0), "exactly the keys"),
])
def test_the_schema_takes_attention_rows(row, message):
    results = {"meta": fake_results()["meta"], "rows": [row]}
    if message is None:
        schema.validate_results(results)
    else:
        with pytest.raises(ValueError, match=message):
            schema.validate_results(results)


@pytest.mark.parametrize("config", TINY_ATTENTION, ids=lambda c: c.name)
def test_materialized_biases(config):
    """-m|p_i - j|, or -m(p_i - j) with the later keys masked (torch) or left to is_causal (JAX),
    p_i = seq_k - seq_q + i."""
    slopes = torch.tensor([0.5, 0.125])
    positions = np.arange(attention.seq_q(config)) + config.seq_len - attention.seq_q(config)
    distance = positions[:, None] - np.arange(config.seq_len)[None, :]
    for causal in (False, True):
        unmasked = (-slopes.numpy()[:, None, None] * (distance if causal else np.abs(distance))).astype(np.float32)
        masked = np.where(distance < 0, -np.inf, unmasked) if causal else unmasked
        got = attention.torch_bias(slopes, config, causal, torch.float32)
        assert got.shape == attention.bias_shape(config)
        np.testing.assert_array_equal(got[0].numpy(), masked)
        np.testing.assert_array_equal(np.asarray(attention.jax_bias(slopes.numpy(), config, causal, "float32"))[0],
                                      unmasked)


def _outputs(provider, op):
    call = provider.call(op)
    return attention._results(call.fn(*call.args))


@pytest.mark.parametrize("config", TINY_ATTENTION, ids=lambda c: c.name)
def test_flex_score_mod_and_sdpa_agree_with_the_bias(config, monkeypatch):
    """Flex's score_mod and block mask (eager, forward: Flex has no backward on a CPU) give
    SDPA's attention with the materialized bias; SDPA without a bias is other attention."""
    monkeypatch.setattr(attention.Flex, "compiled", False)
    x = attention.torch_arrays(config, "float32", CPU)
    flex, biased, plain = attention.Flex(x), attention.SdpaBias(x), attention.SdpaNoBias(x)
    for op in ("fwd", "fwd_causal"):
        if op in attention.ops_at(config):
            (want,) = _outputs(biased, op)
            np.testing.assert_allclose(_outputs(flex, op)[0], want, atol=1e-5)
            assert np.abs(_outputs(plain, op)[0] - want).max() > 1e-2


@pytest.fixture
def interpreted(monkeypatch):
    """trinix's providers through Triton's interpreter, Flex eager."""
    monkeypatch.setattr(attention.TrinixAttention, "backend", "interpret")
    monkeypatch.setattr(attention.TrinixJaxAttention, "backend", "interpret")
    monkeypatch.setattr(attention.Flex, "compiled", False)


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_trinix_is_checked_against_the_bias_in_float32(framework, interpreted, monkeypatch):
    for config in TINY_ATTENTION:
        attention.check_trinix(framework, config, "float32", CPU)
    cls = attention.TRINIX[framework]
    right = cls.attend
    monkeypatch.setattr(cls, "attend", lambda self, causal: right(self, not causal))  # the other form
    with pytest.raises(RuntimeError, match=f"through {framework} disagrees with .* at tiny: fwd o: max"):
        attention.check_trinix(framework, TINY_ATTENTION[0], "float32", CPU)

    def fails(self, causal):
        raise ValueError("unsupported")

    monkeypatch.setattr(cls, "attend", fails)  # its rows will say so; the run goes on
    attention.check_trinix(framework, TINY_ATTENTION[0], "float32", CPU)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="JAX's arrays would live on its GPU here: the JAX "
                                                           "providers' rows would not be the CPU's")
def test_attention_rows_on_the_cpu(interpreted, monkeypatch):
    """Every provider's rows at each configuration: timed where it runs here, a note where not;
    trinix checked first; TFLOP/s from the time, a roofline for the decoding step."""
    checked = []
    monkeypatch.setattr(attention, "check_trinix", lambda *args: checked.append(args))
    harness = Harness(CPU, warmup=1, iters=1)
    progress = Progress(attention.row_count(TINY_ATTENTION))
    rows = []
    for framework in ("torch", "jax"):
        rows += attention.attention_rows(harness, framework, TINY_ATTENTION, "float32", schema.every_provider(),
                                         100.0, progress=progress, check_config=TINY_ATTENTION[0])
    assert progress.done == len(rows) == attention.row_count(TINY_ATTENTION) == 5 * len(schema.ATTENTION_PROVIDERS)
    assert [(framework, config.name) for framework, config, *_ in checked] == [("torch", "tiny"), ("jax", "tiny")]
    schema.validate_results({"meta": fake_results()["meta"], "rows": rows})
    by_key = {(r["config"], r["op"], r["provider"]): r for r in rows}
    for (config_name, op, provider), row in by_key.items():
        config = next(c for c in TINY_ATTENTION if c.name == config_name)
        if provider == "jax_cudnn_bias":
            assert row["ms"] is None and row["note"] == providers.NEEDS_GPU
        elif provider == "flex" and "bwd" in op:
            assert row["ms"] is None and row["note"].startswith("failed: NotImplementedError"), row
        else:
            assert row["ms"] > 0 and row["tflops"] == pytest.approx(attention.tflops(config, op, row["ms"]), rel=1e-4)
        expected_roofline = attention.roofline_ms(config, "float32", 100.0)
        assert row["roofline_ms"] == (None if expected_roofline is None else pytest.approx(expected_roofline, rel=1e-4))
    assert by_key["tiny-decode", "fwd_causal", "triton"]["roofline_ms"] > 0
    assert by_key["tiny", "fwd_bwd", "sdpa_bias"]["note"] == attention.SdpaBias.note


def test_untimed_rows_a_bias_too_big_and_a_failure_are_rows_with_notes(monkeypatch):
    xl = ATTENTION_CONFIGS["xl"]
    empty = torch.empty(0, dtype=torch.float16)
    x = attention.Arrays(xl, empty, empty, empty, empty, torch.ones(128))
    harness = Harness(CPU, warmup=1, iters=1)
    ms, burst_ms, peak, note = attention.measure(harness, attention.SdpaBias(x), "fwd")
    assert (ms, burst_ms, peak) == (None, None, None)
    assert note.startswith("does not fit: the bias (1, 128, 32768, 32768) float16 alone is 275 GB")

    monkeypatch.setattr(attention.Flex, "compiled", False)
    ms, _, _, note = attention.measure(harness, attention.Flex(x), "fwd_bwd_causal")
    assert ms is None and note.startswith("not timed at this size")

    class OutOfMemory(attention.SdpaNoBias):
        def attend(self, causal):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 17.18 GiB.\nmore lines")

    ms, _, _, note = attention.measure(harness, OutOfMemory(x), "fwd_bwd")
    # harness.failure_note, the one rule for every section's failed call: running out of memory does not fit
    assert ms is None and note == ("does not fit: out of memory (OutOfMemoryError: CUDA out of memory. "
                                   "Tried to allocate 17.18 GiB.)")

    class Unsupported(attention.SdpaNoBias):
        def attend(self, causal):
            raise RuntimeError("no kernel for this shape\nmore lines")

    ms, _, _, note = attention.measure(harness, Unsupported(x), "fwd_bwd")
    assert ms is None and note == "failed: RuntimeError: no kernel for this shape"


def test_a_capped_harness_makes_few_calls_of_a_long_row():
    harness = Harness(CPU, warmup=10, iters=100).capped(0.1)
    calls = []

    def start():
        time.sleep(0.04)
        calls.append(1)

    ms = harness.median_ms("torch", Run(start, lambda out: out))
    # warm-up: the first call, then until 0.1 s (3 calls); one estimate; 3 timed calls
    assert 1 + 3 + 1 + harness_module.CAPPED_MIN_ITERS <= len(calls) <= 10 and ms >= 40
    assert Harness(CPU, warmup=1, iters=100).cap_s is None  # uncapped unless asked


def _fake_attention_rows() -> list[dict]:
    """Every attention row, as on an H100: the bias too big at xl, cuDNN failing at large."""
    rows = []
    for config in schema.CONFIGS[ATTENTION]:
        for op in attention.ops_at(config):
            for i, provider in enumerate(schema.ATTENTION_PROVIDERS):
                ms, note = 0.5 * (i + 1) * 4.0 ** list(ATTENTION_CONFIGS).index(config.name), None
                if config.name == "xl" and provider in ("sdpa_bias", "jax_cudnn_bias", "jax_xla_bias"):
                    ms, note = None, "does not fit: the bias (1, 128, 32768, 32768) float16 alone is 275 GB, 79 GB free"
                if config.name == "large" and provider == "jax_cudnn_bias":
                    ms, note = None, "failed: XlaRuntimeError: RESOURCE_EXHAUSTED: out of memory"
                rows.append(schema.row(
                    ATTENTION, config.name, op, provider, ms=ms, note=note, tflops=attention.tflops(config, op, ms),
                    burst_ms=0.8 * ms if provider == "triton" else None, peak_mb=None if ms is None else 100.0 + i,
                    roofline_ms=attention.roofline_ms(config, "float16", 3000.0)))
    return rows


def test_the_attention_section_is_written_from_its_rows():
    results = fake_results()
    results["rows"] += _fake_attention_rows()
    schema.validate_results(results)
    rows = analysis.Rows(results)
    text = report.render_markdown(results, schema.CONFIGS, RUN_INFO, None, "results/latest.json")
    tables = _section_tables(text + "\n## end", ATTENTION)
    names = ["medium", "large", "xl", "decode"]  # the decoding step last
    assert [chunk.split(":")[0] for chunk in text.split("\n### ") if chunk.split(":")[0].lower() in names] == [
        "Medium", "Large", "XL", "Decode"]
    label = analysis.label
    for name, lines in zip(names, tables):
        for op in attention.ops_at(ATTENTION_CONFIGS[name]):
            ms = {p: rows.ms(ATTENTION, name, op, p) for p in schema.ATTENTION_PROVIDERS}
            if name == "decode":
                roofline = rows.roofline(ATTENTION, name, op)
                cells = [analysis.fmt_ms(roofline), *("—" if m is None else
                         f"{analysis.fmt_ms(m)} ({analysis.fmt_x(m / roofline)})" for m in ms.values())]
            else:
                cells = ["—" if m is None else f"{analysis.fmt_ms(m)} "
                         f"({analysis.fmt_amount(rows.get(ATTENTION, name, op, p, 'tflops'))})" for p, m in ms.items()]
            assert [label(ATTENTION, op), *cells] in lines, (name, op)
            flex_over_trinix = analysis.fmt_x(ms["flex"] / ms["triton"])
            trinix_over_sdpa = analysis.fmt_x(ms["triton"] / ms["sdpa_no_bias"])
            alibi_cost = analysis.fmt_x(ms["triton"] / ms["triton_no_alibi"])
            jax_over_torch = analysis.fmt_x(ms["jax_triton"] / (0.8 * ms["triton"]))
            cudnn = "—" if ms["jax_cudnn_bias"] is None else analysis.fmt_x(ms["jax_cudnn_bias"] / ms["jax_triton"])
            assert [label(ATTENTION, op), flex_over_trinix, trinix_over_sdpa, alibi_cost, jax_over_torch, cudnn] in lines
            peaks = [analysis.fmt_amount(rows.get(ATTENTION, name, op, p, "peak_mb")) for p in ms]
            assert [label(ATTENTION, op), *peaks] in lines
    for row in results["rows"]:
        if row["ms"] is None:
            assert row["note"] in text, row


def test_the_attention_targets_are_judged_from_the_rows():
    """Each target's ratio in the run, met or not; a missed speed target says the time it needs and
    trinix's without ALiBi, against SDPA, no bias."""
    results = fake_results()
    results["rows"] += _fake_attention_rows()
    by_key = {(r["config"], r["op"], r["provider"]): r for r in results["rows"] if r["method"] == ATTENTION}
    sdpa = by_key["large", "fwd", "sdpa_no_bias"]["ms"]
    by_key["large", "fwd", "triton"]["ms"] = 1.2 * sdpa  # over the 1.10x target
    no_alibi = by_key["large", "fwd", "triton_no_alibi"]["ms"] = 1.15 * sdpa
    by_key["xl", "fwd_bwd_causal", "triton"]["peak_mb"] = 1e6  # 1 TB: over the memory target
    text = report.render_markdown(results, schema.CONFIGS, RUN_INFO, None, "results/latest.json")
    lines = [[cell.strip() for cell in line.strip("|").split("|")]
             for line in text.split("### Targets")[1].split("\n### ")[0].splitlines() if line.startswith("| ")]
    judged = {line[0]: line[1:] for line in lines[1:]}
    fx = analysis.fmt_x
    assert judged["large forward: trinix (torch)'s time ≤ 1.10× SDPA, no bias"] == [
        "1.20×", "**missed**", f"{analysis.fmt_ms(1.1 * sdpa)} ms (1.10× SDPA, no bias)", "1.15× SDPA, no bias"]
    causal = {p: by_key["large", "fwd_causal", p]["ms"] for p in ("triton", "sdpa_no_bias")}
    assert judged["large causal forward: trinix (torch)'s time ≤ 1.10× SDPA, no bias"] == [
        fx(causal["triton"] / causal["sdpa_no_bias"]), "met", "", ""]
    medium = {p: by_key["medium", "fwd_bwd", p]["ms"] for p in ("triton", "flex")}
    assert judged["medium forward + backward: FlexAttention's time ≥ 1.30× trinix (torch)'s"][:2] == [
        fx(medium["flex"] / medium["triton"]), "met"]
    assert judged["large forward: JAX cuDNN + bias's time ≥ 2.50× trinix (JAX)'s"] == ["—", "not measured", "", ""]
    assert judged["xl causal forward + backward: peak memory ≤ 1.20× the bytes of q, k, v, o, do, dq, dk, dv and "
                  "the log-sum-exp"][1] == "**missed**"
    assert no_alibi and len(judged) == len(attention_section.TARGETS)


def test_no_attention_section_without_its_rows():
    text = report.render_markdown(fake_results(), schema.CONFIGS, RUN_INFO, None, "results/latest.json")
    assert "## Attention with ALiBi" not in text
    results = fake_results()
    results["rows"] = _fake_attention_rows()  # attention alone: no RoPE or ALiBi sections, no plots
    text = report.render_markdown(results, {ATTENTION: schema.CONFIGS[ATTENTION]}, RUN_INFO,
                                  plots.write_plots(results, {ATTENTION: []}, Path("."))[1], "results/latest.json")
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert "## Attention with ALiBi" in headings and "## Summary" not in headings
    assert f"## {schema.METHODS['rope']['title']}" not in headings


# --- every section in one report, and one report from several runs --------------------------


def _headings(text: str) -> list[str]:
    return [line[3:] for line in text.splitlines() if line.startswith("## ")]


def _order(text: str) -> list[str]:
    """The report's kinds of sections, in order."""
    kinds = {"What a model gains": "blocks", "Test Environment": "environment", "Summary": "operations",
             schema.METHODS["rope"]["title"]: "operations", schema.METHODS["alibi"]["title"]: "operations",
             schema.METHODS[ATTENTION]["title"]: "attention", "Implementation Details": "rest",
             "Reproduce These Results": "rest"}
    return list(dict.fromkeys(kinds[h] for h in _headings(text) if h in kinds))


def test_the_three_kinds_of_sections_make_one_report_in_order():
    results = fake_results()
    results["rows"] += _fake_attention_rows() + fake_block_rows()
    results["rows"].sort(key=schema.row_order({**schema.CONFIGS, **schema.BLOCK_CONFIGS}))
    schema.validate_results(results)  # one schema for the rows of every method
    configs = cli.selected_configs(cli.parse_args([]))
    assert list(configs) == schema.every_method()
    text = report.render_markdown(results, configs, RUN_INFO, None, "results/latest.json")
    assert _order(text) == ["blocks", "environment", "operations", "attention", "rest"]
    console = report.console_table(results)
    assert "alibi_attention" in console and "Blocks:" in console and "flex ms" in console


def _run_file(tmp_path: Path, name: str, results: dict) -> Path:
    path = tmp_path / name / "latest.json"
    path.parent.mkdir()
    path.write_text(json.dumps(results))
    return path


def test_two_runs_render_one_report(tmp_path):
    blocks_run = {"meta": {**fake_results()["meta"], "date": "2026-12-01", "copy_gbps": 3000.0,
                           "run": {"command": "python benchmarks/benchmark_embeddings.py --methods llama_block "
                                              "bloom_block", "warmup": 10, "iters": 100}},
                  "rows": fake_block_rows()}
    rest = fake_results()
    rest["rows"] += _fake_attention_rows()
    rest["meta"]["run"] = {"command": "python benchmarks/benchmark_embeddings.py --methods rope alibi "
                                      "alibi_attention", "warmup": 10, "iters": 100}
    rest["rows"] += [dict(r, ms=999.0, note=None) for r in fake_block_rows() if r["ms"]]  # the first file's win
    a, b = _run_file(tmp_path, "blocks", blocks_run), _run_file(tmp_path, "rest", rest)
    assert cli.main(["--render-from", str(a), str(b), "--output", str(tmp_path / "out")]) == 0
    merged = json.loads((tmp_path / "out" / "results" / "latest.json").read_text())
    schema.validate_results(merged)
    assert {k: v for k, v in merged["meta"].items() if k != "runs"} == blocks_run["meta"]  # the first file's
    assert [(r["methods"], r["date"], r["copy_gbps"]) for r in merged["meta"]["runs"]] == [
        (["llama_block", "bloom_block"], "2026-12-01", 3000.0), (["rope", "alibi", ATTENTION], "2026-11-29", 4249.0)]
    assert merged["meta"]["runs"][1]["command"] == rest["meta"]["run"]["command"]
    key = schema.row_order({**schema.CONFIGS, **schema.BLOCK_CONFIGS})
    assert merged["rows"] == sorted(fake_block_rows() + [r for r in rest["rows"] if r["method"] not in schema.BLOCKS],
                                    key=key)
    # Each method's GB/s at the copy bandwidth of its own run, whose rooflines its rows carry.
    rows = analysis.Rows(merged)
    assert rows.copy_gbps("rope") == 4249.0 and rows.copy_gbps("llama_block") == 3000.0
    text = (tmp_path / "out" / "EMBEDDINGS.md").read_text()
    assert _order(text) == ["blocks", "environment", "operations", "attention", "rest"]
    header = text[:text.index("## What a model gains")]
    assert "come from separate runs" in header and "2026-12-01" in header and "3,000 GB/s" in header
    assert "- **Runs**: the sections come from separate runs" in text
    assert f"This report: `python benchmarks/benchmark_embeddings.py --render-from {a} {b}`" in text
    # One run's file renders alone, as that run wrote it: no runs in its meta.
    assert cli.main(["--render-from", str(b), "--output", str(tmp_path / "one")]) == 0
    one = json.loads((tmp_path / "one" / "results" / "latest.json").read_text())
    assert one["meta"] == rest["meta"] and "separate runs" not in (tmp_path / "one" / "EMBEDDINGS.md").read_text()


def test_render_from_without_matplotlib_and_what_it_refuses(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # the import fails: no plots, a note
    blocks_run = {"meta": fake_results()["meta"], "rows": fake_block_rows()}
    rest = fake_results()
    a, b = _run_file(tmp_path, "blocks", blocks_run), _run_file(tmp_path, "rest", rest)
    written = report.render_from([a, b], tmp_path / "out", "python benchmarks/benchmark_embeddings.py --render-from")
    assert [p.name for p in written] == ["EMBEDDINGS.md", "latest.json"]
    text = (tmp_path / "out" / "EMBEDDINGS.md").read_text()
    assert "## Summary" in text and "Plots: [time" not in text and "(not recorded)" in text
    bf16 = {"meta": {**rest["meta"], "dtype": "bfloat16"}, "rows": rest["rows"][:1]}
    with pytest.raises(ValueError, match="different dtypes"):
        report.merge_results([blocks_run, {"meta": rest["meta"], "rows": []}, bf16, rest])
    custom = {"meta": rest["meta"], "rows": [dict(rest["rows"][0], config="custom")]}
    with pytest.raises(ValueError, match="custom configuration"):
        report.merge_results([custom])
    broken = {"meta": {**rest["meta"], "runs": [{"methods": ["alibi"], "date": "2026-11-29", "gpu": "x",
                                                  "copy_gbps": 1.0, "command": None}]}, "rows": rest["rows"]}
    with pytest.raises(ValueError, match="in none of meta.runs"):
        schema.validate_results(broken)
