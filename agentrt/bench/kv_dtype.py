"""KV storage dtype on one model: checkpoint bytes, prefill and decode speed, fp32 vs bf16 K/V.

    python -m agentrt.bench.kv_dtype MODEL [TOKENS] [STEPS] [REPEATS]

One model, two engines in two temporary homes that differ only in `kv_dtype` (float32,
bfloat16), on the CPU with one torch thread. Per engine, once: prefill TOKENS tokens of text
(default 2048) into a session, save it (checkpoint file bytes and the K/V tensor bytes in
it) and greedy-decode STEPS tokens (default 32); the last prompt logits and the greedy
tokens of the two are compared. Timed: one warm-up round, then REPEATS rounds (default 3)
in a rotating order, each a prefill of a fresh TOKENS-token session followed by STEPS decode
steps. Where the greedy tokens part, the top-1 minus top-2 logit of both at that step is
reported (a near-tie parts them; a wrong read would not need one). Prints the table and one
JSON line.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

VARIANTS = ("float32", "bfloat16")


def _engine(model: Any, home: Path, kv_dtype: str) -> Any:
    from agentrt import Engine

    return Engine(
        model, kv_budget="1GiB", kv_dtype=kv_dtype, home=home, db=f"sqlite:///{home}/b.db"
    )


def _once(eng: Any, ids: list[int], steps: int) -> dict[str, Any]:
    """Prefill + save + greedy decode in a new session: sizes, logits, tokens."""
    from agentrt.dms.cache_state import pack_state

    s = eng.new_session()
    logits = s.prefill(ids)
    info = eng.save(s)
    state = pack_state(s.cache)
    kv = sum(t.nbytes for name, t in state.items() if name.endswith((".k", ".v")))
    tokens = list(s.generate(steps, temperature=0.0))
    s.close()
    return {"file": info.size_bytes, "kv": kv, "logits": logits, "tokens": tokens}


def _timed(eng: Any, ids: list[int], steps: int) -> tuple[float, float]:
    """(prefill seconds, decode seconds) of a fresh session."""
    s = eng.new_session()
    t0 = time.perf_counter()
    s.prefill(ids)
    t1 = time.perf_counter()
    list(s.generate(steps, temperature=0.0))
    t2 = time.perf_counter()
    s.close()
    return t1 - t0, t2 - t1


def main(argv: list[str]) -> dict[str, Any]:
    """Run the measurement for MODEL [TOKENS] [STEPS] [REPEATS]; print and return the result.

    Uses the caller's torch thread count (run as a module: one thread).
    """
    from agentrt.bench.workload import text_ids
    from agentrt.models.resolve import load_resolved

    path = argv[0]
    tokens = int(argv[1]) if len(argv) > 1 else 2048
    steps = int(argv[2]) if len(argv) > 2 else 32
    repeats = int(argv[3]) if len(argv) > 3 else 3
    model = load_resolved(path, device=torch.device("cpu"), progress=False)
    ids = text_ids(model, tokens)
    root = Path(tempfile.mkdtemp(prefix="agentrt-kv-dtype-"))
    engines = {v: _engine(model, root / v, v) for v in VARIANTS}
    once = {v: _once(engines[v], ids, steps) for v in VARIANTS}
    times: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}
    for r in range(repeats + 1):
        order = VARIANTS[r % 2 :] + VARIANTS[: r % 2]
        for v in order:
            sample = _timed(engines[v], ids, steps)
            if r > 0:  # round 0 is the warm-up
                times[v].append(sample)
        print(f"round {r}/{repeats} done", file=sys.stderr)
    ref, low = once["float32"], once["bfloat16"]
    diff = (low["logits"] - ref["logits"]).abs().max().item()
    same = next(
        (i for i, (a, b) in enumerate(zip(ref["tokens"], low["tokens"], strict=True)) if a != b),
        steps,
    )
    margins = {}
    if same < steps:  # where the greedy runs part: top-1 minus top-2 logit, both storages
        for v in VARIANTS:
            s = engines[v].new_session()
            top = s.prefill(ids + ref["tokens"][:same]).topk(2).values
            margins[v] = (top[0] - top[1]).item()
            s.close()
    for eng in engines.values():
        eng.close()
    result: dict[str, Any] = {
        "model": path,
        "dms": model.dms is not None,
        "compute_dtype": str(model.dtype).removeprefix("torch."),
        "tokens": tokens,
        "steps": steps,
        "repeats": repeats,
        "logits_max_abs_diff": diff,
        "logits_max_abs": ref["logits"].abs().max().item(),
        "greedy_tokens_equal_before_divergence": same,
        "top2_margin_at_divergence": margins,
        "load_1min": _load(),
    }
    for v in VARIANTS:
        pre = sorted(t[0] for t in times[v])
        dec = sorted(t[1] for t in times[v])
        result[v] = {
            "checkpoint_bytes": once[v]["file"],
            "kv_tensor_bytes": once[v]["kv"],
            "prefill_s": pre,
            "decode_s": dec,
            "prefill_tok_s_median": tokens / pre[len(pre) // 2],
            "decode_tok_s_median": steps / dec[len(dec) // 2],
        }
    _print(result)
    return result


def _load() -> float | None:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _print(r: dict[str, Any]) -> None:
    print(
        "| kv_dtype | checkpoint MB | K/V tensors MB | prefill s (min–max) | decode tok/s (median) |"
    )
    print("| --- | --- | --- | --- | --- |")
    for v in VARIANTS:
        x = r[v]
        pre = x["prefill_s"]
        print(
            f"| {v} | {x['checkpoint_bytes'] / 1e6:.1f} | {x['kv_tensor_bytes'] / 1e6:.1f} | "
            f"{pre[len(pre) // 2]:.2f} ({pre[0]:.2f}–{pre[-1]:.2f}) | {x['decode_tok_s_median']:.2f} |"
        )
    print(json.dumps(r, default=str))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1:])
