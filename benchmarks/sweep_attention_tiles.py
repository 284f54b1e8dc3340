"""Sweep of the attention kernels' tiles on a CUDA GPU: each kernel (forward, dq, dk/dv) timed
alone per (BLOCK_M, BLOCK_N, num_warps, num_stages) candidate, per head_dim and ALiBi form.
The fastest candidate of each kernel, summed over the forms, is printed as rows for the TILES
table in kernels/attention.py (committed there per head_dim; swept on the GPU it names).

    python benchmarks/sweep_attention_tiles.py [--head-dims 64 128] [--forms symmetric causal]
        [--shape 1 64 8192] [--stages fwd dq dkdv decode]

fp16, BSHD, q, k and v of shape (batch, seq, heads, head_dim); "decode" times the forward of one
query per sequence over DECODE_SHAPE's keys, causal alone, its keys not split.
"""

import argparse

import torch
from triton.testing import do_bench

from trinix.alibi import alibi_slopes
from trinix.kernels.attention import attention_bwd_calls, attention_fwd_calls
from trinix.torch.launcher import launch, operand

# (BLOCK_M, BLOCK_N, num_warps, num_stages): the forward and dq own BLOCK_M queries and loop
# over key tiles; dk/dv owns BLOCK_N keys and loops over query tiles of BLOCK_M.
CANDIDATES = {
    "fwd": [(128, 64, 8, 3), (128, 64, 8, 2), (128, 128, 8, 2), (128, 128, 8, 3), (128, 64, 4, 3),
            (64, 64, 4, 3), (128, 32, 4, 3)],
    "dq": [(128, 64, 8, 2), (128, 64, 8, 3), (128, 32, 8, 2), (128, 32, 4, 3), (64, 64, 4, 2), (64, 32, 4, 3),
           (128, 128, 8, 2)],
    "dkdv": [(64, 64, 8, 2), (64, 64, 4, 2), (32, 128, 8, 2), (32, 128, 4, 3), (64, 128, 8, 2), (32, 64, 4, 3),
             (64, 64, 8, 3)],
    "decode": [(16, 128, 4, 3), (16, 128, 4, 2), (16, 64, 4, 3), (16, 64, 4, 4), (16, 64, 2, 3), (16, 32, 4, 4),
               (16, 256, 4, 2)],
}
DECODE_SHAPE = (16, 64, 8192)  # batch, heads, keys


def time_kernel(stage, tiles, arrays, slopes_op, alibi):
    """ms of one launch of `stage`'s kernel with `tiles`, or None if it does not compile."""
    ops = {name: operand(arrays[name]) for name in ("q", "k", "v", "o", "do")}
    if stage in ("fwd", "decode"):
        (call,) = attention_fwd_calls(ops["q"], ops["k"], ops["v"], slopes_op, alibi=alibi, tiles=tiles,
                                      key_splits=1)
    else:
        _, dkdv, dq = attention_bwd_calls(ops["q"], ops["k"], ops["v"], ops["o"], ops["do"], slopes_op,
                                          alibi=alibi, tiles=tiles)
        call = dq if stage == "dq" else dkdv
    try:
        launch(call, arrays, interpret=False)
        torch.cuda.synchronize()
    except Exception as error:  # out of shared memory or registers: not a candidate here
        print(f"    {stage} {tiles}: {type(error).__name__}: {str(error).splitlines()[0][:100]}")
        return None
    return do_bench(lambda: launch(call, arrays, interpret=False), warmup=10, rep=40)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--head-dims", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--forms", nargs="+", default=["symmetric", "causal"])
    parser.add_argument("--shape", type=int, nargs=3, default=[1, 64, 8192], metavar=("BATCH", "HEADS", "SEQ"))
    parser.add_argument("--stages", nargs="+", default=list(CANDIDATES))
    args = parser.parse_args()
    print(torch.cuda.get_device_name(), "torch", torch.__version__)
    batch, heads, seq = args.shape
    torch.manual_seed(0)
    best_rows = []
    for head_dim in args.head_dims:
        for stage in args.stages:
            b, s, h, queries = (batch, seq, heads, seq) if stage != "decode" else (*DECODE_SHAPE, 1)
            q, do = (torch.randn(b, queries, h, head_dim, device="cuda", dtype=torch.float16) for _ in range(2))
            k, v = (torch.randn(b, s, h, head_dim, device="cuda", dtype=torch.float16) for _ in range(2))
            slopes = torch.from_numpy(alibi_slopes(h)).float().cuda()
            totals = {tiles: 0.0 for tiles in CANDIDATES[stage]}
            for alibi in args.forms if stage != "decode" else ["causal"]:
                (forward,) = attention_fwd_calls(operand(q), operand(k), operand(v), operand(slopes), alibi=alibi,
                                                 key_splits=1)
                o, lse = launch(forward, dict(q=q, k=k, v=v, slopes=slopes), interpret=False)
                arrays = dict(q=q, k=k, v=v, o=o, do=do, lse=lse, slopes=slopes)
                preprocess = attention_bwd_calls(*(operand(arrays[name]) for name in ("q", "k", "v", "o", "do")),
                                                 operand(slopes), alibi=alibi)[0]
                arrays.update(zip(("delta", "lse_base2"), launch(preprocess, arrays, interpret=False)))
                for tiles in CANDIDATES[stage]:
                    ms = time_kernel(stage, tiles, arrays, operand(slopes), alibi)
                    print(f"head_dim {head_dim} {stage:4s} {alibi:9s} {tiles}: "
                          + ("failed" if ms is None else f"{ms:.3f} ms"), flush=True)
                    totals[tiles] = None if ms is None or totals[tiles] is None else totals[tiles] + ms
            timed = {tiles: total for tiles, total in totals.items() if total is not None}
            best = min(timed, key=timed.get)
            forms = "causal" if stage == "decode" else "+".join(args.forms)
            best_rows.append(f"{head_dim} {stage}={best}  # {timed[best]:.3f} ms over {forms}")
    print("\nfastest per head_dim and kernel:")
    print("\n".join(best_rows))


if __name__ == "__main__":
    main()
