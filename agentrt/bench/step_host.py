"""Host time of one engine decode step on a tiny random-weight model (CPU by default).

The model is so small that the forward's arithmetic is negligible: what a step costs here
is the host-side work around it (scheduling, block tables, slot maps, index tensors, Python
loops), which is what the serving step must keep small. Run it as

    python -m agentrt.bench.step_host --sessions 8 --steps 64

and it prints one JSON object with the mean and median milliseconds per decode step: CPU time
of the process (robust when other work shares the machine) and wall time.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from typing import Any

import torch


def tiny_dms_model(*, layers: int, window: int, seed: int = 0) -> Any:
    """A random-weight Llama (hidden 64, 4 query / 2 KV heads, head_dim 16) with DMS evicting."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from agentrt.dms import DMSConfig, DMSModel

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=8192,
    )
    hf = AutoModelForCausalLM.from_config(cfg).eval()
    return DMSModel(hf, DMSConfig(window_size=window, initial_alpha_offset=0.0))


def measure_step_host_time(
    *,
    sessions: int = 8,
    prompt_len: int = 64,
    steps: int = 64,
    warmup: int = 4,
    layers: int = 8,
    window: int = 16,
    block_size: int = 16,
) -> dict[str, Any]:
    """Milliseconds per engine decode step with `sessions` sessions generating together."""
    from agentrt.engine import Engine

    torch.set_num_threads(1)
    model = tiny_dms_model(layers=layers, window=window)
    eng = Engine(model, num_blocks=sessions * layers * 2 * 64, block_size=block_size)
    gen = torch.Generator().manual_seed(0)
    handles = [eng.new_session(seed=i) for i in range(sessions)]
    for s in handles:
        s.prefill(torch.randint(0, 256, (prompt_len,), generator=gen).tolist())
    streams = [s.generate(warmup + steps + 1, ignore_eos=True) for s in handles]
    times, cpu_times = [], []
    for i in range(warmup + steps):
        t0, c0 = time.perf_counter(), time.process_time()
        info = eng.step()
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        if info.get("decode_tokens") != sessions:
            raise RuntimeError(f"step {i} decoded {info.get('decode_tokens')} of {sessions}")
        if i >= warmup:
            times.append(dt * 1e3)
            cpu_times.append(dc * 1e3)
    for st in streams:
        st.close()
    ratio = handles[0].stats()["compression_ratio"]
    eng.close()
    return {
        "sessions": sessions,
        "layers": layers,
        "prompt_len": prompt_len,
        "window": window,
        "block_size": block_size,
        "steps": steps,
        "mean_cpu_ms_per_step": statistics.fmean(cpu_times),
        "median_cpu_ms_per_step": statistics.median(cpu_times),
        "mean_ms_per_step": statistics.fmean(times),
        "median_ms_per_step": statistics.median(times),
        "min_ms_per_step": min(times),
        "compression_ratio": ratio,
        "torch_threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {platform.processor() or platform.system()}",
        "torch": torch.__version__,
    }


def main(argv: list[str] | None = None) -> None:
    """Command line: print the measurement as JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sessions", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--window", type=int, default=16)
    a = p.parse_args(argv)
    out = measure_step_host_time(
        sessions=a.sessions,
        prompt_len=a.prompt_len,
        steps=a.steps,
        layers=a.layers,
        window=a.window,
    )
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
