"""`python -m agentrt.bench.gpu_check --out DIR`: kernels vs references at real shapes, then the bench.

Writes DIR/gpu_check.json, prints a table, exits 1 if any comparison fails (2 without CUDA).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from agentrt.bench.kernel_bench import (
    format_table,
    held_lengths,
    random_paged_cache,
    run_kernel_bench,
)
from agentrt.kernels import (
    KEEP_FOREVER,
    backend_for,
    copy_kv_slots,
    dms_prefill_attention,
    paged_decode_attention,
    write_kv_slots,
)
from agentrt.kernels import reference as ref

TOLERANCES = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (5e-3, 5e-3),
    torch.bfloat16: (1e-2, 1e-2),
}
DTYPE_NAMES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def compare(name: str, want: torch.Tensor, got: torch.Tensor, atol: float, rtol: float) -> dict:
    """One comparison row: max abs/rel error, NaN count, pass iff |got-want| <= atol+rtol|want|."""
    want64, got64 = want.double(), got.double()
    diff = (got64 - want64).abs()
    nonfinite = int((~torch.isfinite(got64)).sum())
    max_abs = float(diff.max()) if diff.numel() else 0.0
    max_rel = float((diff / want64.abs().clamp_min(1e-12)).max()) if diff.numel() else 0.0
    within = bool((diff <= atol + rtol * want64.abs()).all())
    return {
        "name": name, "max_abs": max_abs, "max_rel": max_rel, "atol": atol, "rtol": rtol,
        "nonfinite": nonfinite, "passed": within and nonfinite == 0,
    }  # fmt: skip


def _decode_case(
    name: str, num_seqs: int, max_len: int, dtype: str, block_size: int, splits: int | None,
    heads: tuple[int, int, int] = (32, 8, 128), cr: float = 1.0,
) -> Callable[[torch.device], dict]:  # fmt: skip
    def run(device: torch.device) -> dict:
        hq, hk, d = heads
        dt = DTYPE_NAMES[dtype]
        gen = torch.Generator().manual_seed(7)
        if cr > 1:  # DMS-compressed streams of a max_len context
            lens = torch.tensor(held_lengths(num_seqs, max_len, cr, hk, seed=7))
        else:  # any length up to max_len
            lens = torch.randint(1, max_len + 1, (num_seqs, hk), generator=gen)
        lens = lens.to(torch.int32)
        lens[0, 0] = 0  # an empty stream
        lens = lens.to(device)
        pool, _, tables = random_paged_cache(lens, block_size, d, dt, seed=3)
        q = torch.randn(num_seqs, hq, d, device=device, dtype=dt)
        args = (q, pool, tables, lens, d**-0.5)
        return compare(
            name,
            ref.paged_decode_attention(*args),
            paged_decode_attention(*args, splits),
            *TOLERANCES[dt],
        )

    return run


def _prefill_case(
    name: str, seqs: Sequence[tuple[int, int]], dtype: str, block_size: int,
    heads: tuple[int, int, int] = (32, 8, 128), window: int = 512,
) -> Callable[[torch.device], dict]:  # fmt: skip
    """seqs[b] = (new tokens, cached context of sequence b, held at cr 4 with per-head lengths)."""

    def run(device: torch.device) -> dict:
        hq, hk, d = heads
        dt = DTYPE_NAMES[dtype]
        gen = torch.Generator(device=device).manual_seed(11)
        lens = torch.tensor([held_lengths(1, c, 4, hk, seed=b)[0] for b, (_, c) in enumerate(seqs)])
        lens = torch.where(torch.tensor([c for _, c in seqs])[:, None] > 0, lens, 0)
        lens = lens.to(torch.int32).to(device)
        pool, expiry, tables = random_paged_cache(lens, block_size, d, dt, seed=5)
        pos = torch.cat([torch.arange(c, c + n) for n, c in seqs]).to(device)
        total = pos.numel()
        lo, hi = (min(c for _, c in seqs), max(c + n for n, c in seqs))
        drawn = torch.randint(lo, hi + 1, expiry.shape, generator=gen, device=device)
        keep = torch.rand(expiry.shape, generator=gen, device=device) < 0.5
        expiry.copy_(torch.where(keep, KEEP_FOREVER, drawn))
        delay = torch.randint(0, window + 1, (total, hk), generator=gen, device=device)
        marked = torch.rand(total, hk, generator=gen, device=device) < 0.8
        k_expiry = torch.where(marked, pos[:, None] + delay, KEEP_FOREVER).to(torch.int32)
        cu = torch.tensor([0] + [n for n, _ in seqs], device=device).cumsum(0).to(torch.int32)
        q = torch.randn(total, hq, d, generator=gen, device=device, dtype=dt)
        k = torch.randn(total, hk, d, generator=gen, device=device, dtype=dt)
        v = torch.randn(total, hk, d, generator=gen, device=device, dtype=dt)
        args = (q, k, v, k_expiry, pos.to(torch.int32), cu, pool, expiry, tables, lens, d**-0.5)
        return compare(
            name, ref.dms_prefill_attention(*args), dms_prefill_attention(*args), *TOLERANCES[dt]
        )

    return run


def _slots_case(name: str, n: int, dtype: str) -> Callable[[torch.device], dict]:
    def run(device: torch.device) -> dict:
        dt = DTYPE_NAMES[dtype]
        pool = torch.randn(512, 2, 64, 128, device=device, dtype=dt)
        expiry = torch.randint(0, 1 << 20, (512, 64), device=device, dtype=torch.int32)
        perm = torch.randperm(512 * 64, device=device)
        slots, src = perm[:n], perm[n : 2 * n]
        k, v = torch.randn(2, n, 128, device=device, dtype=dt)
        exp_new = torch.randint(0, 1 << 20, (n,), device=device, dtype=torch.int32)
        want_pool, want_exp = pool.clone(), expiry.clone()
        ref.write_kv_slots(want_pool, want_exp, slots, k, v, exp_new)
        ref.copy_kv_slots(want_pool, want_exp, src, slots.flip(0))
        write_kv_slots(pool, expiry, slots, k, v, exp_new)
        copy_kv_slots(pool, expiry, src, slots.flip(0))
        row = compare(name, want_pool, pool, 0.0, 0.0)
        row["passed"] = row["passed"] and bool(torch.equal(want_exp, expiry))
        return row

    return run


CHECKS: list[Callable[[torch.device], dict]] = [
    _decode_case("decode bf16 s8 <=6k bs64 auto-split", 8, 6000, "bf16", 64, None),
    _decode_case("decode fp16 s4 <=20k bs16 split8", 4, 20000, "fp16", 16, 8),
    _decode_case("decode fp32 s2 <=3k bs64 no-split", 2, 3000, "fp32", 64, 1),
    _decode_case("decode bf16 s1 128k cr8 auto-split", 1, 131072, "bf16", 64, None, cr=8),
    _decode_case("decode bf16 s16 <=4k d64 (llama-1b)", 16, 4096, "bf16", 32, None, (32, 8, 64)),
    _prefill_case("prefill bf16 2 seqs cached", [(1000, 12000), (517, 3000)], "bf16", 64),
    _prefill_case("prefill bf16 fresh 4k", [(4096, 0)], "bf16", 64),
    _prefill_case(
        "prefill fp16 3 seqs d64", [(300, 800), (0, 50), (129, 0)], "fp16", 16, (32, 8, 64)
    ),
    _prefill_case("prefill fp32 1 seq cached", [(600, 2000)], "fp32", 64),
    _slots_case("write+copy slots bf16", 4096, "bf16"),
]


def run_checks(device: torch.device) -> list[dict[str, Any]]:
    """Run every kernel-vs-reference comparison on `device` (Triton path forced by dispatch)."""
    probe = torch.zeros(1, device=device)
    if backend_for(probe) != "triton":
        raise RuntimeError(
            f"dispatch chose {backend_for(probe)!r} for {device}; unset AGENTRT_KERNELS"
        )
    rows = []
    for check in CHECKS:
        start = time.perf_counter()
        row = check(device)
        row["seconds"] = time.perf_counter() - start
        rows.append(row)
        torch.cuda.empty_cache()
    return rows


def format_checks(rows: list[dict[str, Any]]) -> str:
    """Plain-text table of comparison rows."""
    lines = [f"{'check':42s} {'max_abs':>10s} {'max_rel':>10s} {'tol':>8s} result"]
    for r in rows:
        verdict = "ok" if r["passed"] else "FAIL"
        lines.append(
            f"{r['name']:42s} {r['max_abs']:10.2e} {r['max_rel']:10.2e} {r['atol']:8.0e} {verdict}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    parser = argparse.ArgumentParser(prog="python -m agentrt.bench.gpu_check", description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json")
    parser.add_argument("--skip-bench", action="store_true", help="comparisons only")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    start = time.perf_counter()
    rows = run_checks(device)
    print(format_checks(rows), flush=True)
    bench = None if args.skip_bench else run_kernel_bench()
    if bench is not None:
        print("\n" + format_table(bench))
    passed = all(r["passed"] for r in rows)
    report = {
        "passed": passed, "checks": rows, "bench": bench,
        "torch": torch.__version__, "seconds": time.perf_counter() - start,
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    print(f"\n{'PASS' if passed else 'FAIL'}: wrote {args.out / 'gpu_check.json'}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
