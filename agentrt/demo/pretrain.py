"""Pretrain the demo model: a small Qwen3 decoder on task-suite conversations (docs/DEMO_MODEL.md).

`python -m agentrt.demo.pretrain --out DIR --steps N --context 2048 --device auto` trains
the demo tokenizer (or loads `--tokenizer DIR`), then the model, and writes an HF folder
that `agentrt.dms.load_model` serves: config, safetensors, tokenizer, plus
`pretrain_config.json`, `pretrain_log.jsonl` and `pretrain_report.json`. The batches are a
pure function of (seed, step), whatever `--workers` is.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from agentrt.demo.corpus import DOC_END, reply_reserve, training_block_parts
from agentrt.errors import ConfigError

HELDOUT_OFFSET = 10**9  # block indices of the held-out loss (never trained on)


@dataclass(frozen=True)
class PretrainConfig:
    """Model shape, data and optimiser settings of one pretraining run."""

    out: Path
    steps: int = 6000
    context: int = 2048  # tokens per packed block = max_position_embeddings
    batch_size: int = 16  # blocks per step
    lr: float = 1e-3  # peak AdamW learning rate (linear warm-up, cosine to lr/10)
    warmup: int = 200
    weight_decay: float = 0.1
    seed: int = 0
    device: str = "auto"
    prompt_weight: float = 1.0  # loss weight of prompt tokens (replies: 1; 0 = replies only)
    length_dist: str = "uniform"  # uniform | loguniform prompt lengths
    amp: str = "auto"  # auto (bf16 on CUDA) | bf16 | off
    min_length: int = 128  # shortest prompt sampled into a block
    followups: int = 0  # extra questions per document as later turns (denser retrieval)
    hidden_size: int = 256
    layers: int = 6
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 64
    intermediate_size: int = 640
    rope_theta: float = 10000.0
    vocab_size: int = 2048  # BPE merges target (plus specials)
    tokenizer: Path | None = None  # load this tokenizer instead of training one
    init: Path | None = None  # continue from this model folder's weights (shape flags ignored)
    tokenizer_documents: int = 2000
    workers: int = 0  # DataLoader processes building blocks
    log_every: int = 50
    heldout_blocks: int = 8
    save_dtype: str = "float32"  # float32 | bfloat16
    save_every: int = 0  # also write the folder every N steps (0: only at the end)
    warm_steps: int = 0  # the first N of `steps` use short blocks (curriculum; 0 = off)
    warm_context: int = 512  # tokens per block during the warm steps
    warm_batch_size: int = 16  # blocks per warm step
    time_budget: float = 0.0  # seconds: fit `steps` to this after a speed probe (0 = off)

    def __post_init__(self) -> None:
        problems = [
            f"{k}={getattr(self, k)} must be >= {lo}"
            for k, lo in (
                ("steps", 1), ("context", 64), ("batch_size", 1), ("warmup", 0), ("layers", 1),
                ("heads", 1), ("kv_heads", 1), ("head_dim", 16), ("hidden_size", 16),
                ("intermediate_size", 1), ("vocab_size", 300), ("workers", 0), ("log_every", 1),
                ("heldout_blocks", 0), ("min_length", 64), ("tokenizer_documents", 1),
                ("save_every", 0), ("warm_steps", 0), ("followups", 0), ("warm_context", 64),
                ("warm_batch_size", 1),
            )
            if getattr(self, k) < lo
        ]  # fmt: skip
        if self.heads % max(1, self.kv_heads):
            problems.append(f"heads={self.heads} must be a multiple of kv_heads={self.kv_heads}")
        if not 0.0 <= self.prompt_weight <= 1.0:
            problems.append(f"prompt_weight={self.prompt_weight} must be in [0, 1]")
        if self.time_budget < 0:
            problems.append(f"time_budget={self.time_budget} must be >= 0")
        if self.time_budget and self.warm_steps:
            problems.append("time_budget needs warm_steps=0 (the probe times one block shape)")
        if self.time_budget and self.warmup < 3:
            problems.append(
                "time_budget needs warmup >= 3 (the probe's steps must be warm-up steps)"
            )
        for name, ctx in (("context", self.context), ("warm_context", self.warm_context)):
            if name == "warm_context" and not self.warm_steps:
                continue
            reserve = min(reply_reserve(self.followups), ctx // 4)
            if ctx < self.min_length + reserve:
                problems.append(
                    f"{name}={ctx} cannot hold one document (min_length {self.min_length} "
                    f"+ {reserve} tokens kept for the reply)"
                )
        if self.warm_steps > self.steps:
            problems.append(f"warm_steps={self.warm_steps} must be <= steps={self.steps}")
        if self.length_dist not in ("uniform", "loguniform"):
            problems.append(f"length_dist={self.length_dist!r} must be uniform or loguniform")
        if self.amp not in ("auto", "bf16", "off"):
            problems.append(f"amp={self.amp!r} must be auto, bf16 or off")
        if self.save_dtype not in ("float32", "bfloat16"):
            problems.append(f"save_dtype={self.save_dtype!r} must be float32 or bfloat16")
        if not self.lr > 0:
            problems.append(f"lr={self.lr} must be > 0")
        if problems:
            raise ConfigError(
                "; ".join(problems), hint="see python -m agentrt.demo.pretrain --help"
            )


SHAPE_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
              "head_dim", "intermediate_size", "vocab_size", "max_position_embeddings")  # fmt: skip
WARM_OFFSET = 5 * 10**8  # block indices of the warm (short-context) steps


class BlockBatches(torch.utils.data.Dataset):
    """Batch `step` of the seeded recipe: (ids [B, T], labels [B, T], loss weights [B, T]).

    Warm steps (step < warm_steps) hold `warm_batch_size` blocks of `warm_context` tokens,
    block indices WARM_OFFSET + step·B + r; later steps hold `batch_size` blocks of
    `context` tokens, indices (step − warm_steps)·B + r. Prompt tokens weigh `prompt_weight`,
    reply tokens 1, padding 0.
    """

    def __init__(self, tokenizer: Any, cfg: PretrainConfig, offset: int = 0) -> None:
        self.tokenizer, self.cfg, self.offset = tokenizer, cfg, offset

    def __len__(self) -> int:
        return self.cfg.steps

    def shape(self, step: int) -> tuple[int, int, int]:
        """(blocks, context, first block index) of batch `step`."""
        cfg = self.cfg
        if step < cfg.warm_steps:
            return cfg.warm_batch_size, cfg.warm_context, WARM_OFFSET + step * cfg.warm_batch_size
        return cfg.batch_size, cfg.context, (step - cfg.warm_steps) * cfg.batch_size

    def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        blocks, context, first = self.shape(step)
        rows = [
            training_block_parts(
                self.tokenizer,
                seed=cfg.seed,
                index=self.offset + first + r,
                context=context,
                min_length=cfg.min_length,
                length_dist=cfg.length_dist,
                followups=cfg.followups,
            )
            for r in range(blocks)
        ]
        ids = torch.tensor([r[0] for r in rows], dtype=torch.long)  # [B, T]
        labels = torch.tensor([r[1] for r in rows], dtype=torch.long)  # [B, T]
        prompt = torch.tensor([r[2] for r in rows], dtype=torch.bool)
        weights = torch.where(prompt, cfg.prompt_weight, 1.0) * (labels != -100)
        return ids, labels, weights


def weighted_loss(model: Any, ids: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor):
    """Next-token cross-entropy, each target weighted (weights [B, T] of the label positions)."""
    logits = model(input_ids=ids).logits[:, :-1].float()
    target, w = labels[:, 1:], weights[:, 1:].to(logits.dtype)
    ce = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        target.reshape(-1),
        ignore_index=-100,
        reduction="none",
    )
    return (ce * w.reshape(-1)).sum() / w.sum().clamp(min=1e-6)


def build_model(cfg: PretrainConfig, tokenizer: Any) -> Any:
    """A randomly initialised Qwen3 causal LM sized by cfg, its vocab = the tokenizer's."""
    from transformers import AutoModelForCausalLM, Qwen3Config

    hf_cfg = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.kv_heads,
        head_dim=cfg.head_dim,
        max_position_embeddings=cfg.context,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        tie_word_embeddings=True,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.convert_tokens_to_ids(DOC_END),
        bos_token_id=None,
    )
    return AutoModelForCausalLM.from_config(hf_cfg, attn_implementation="sdpa")


def load_init(cfg: PretrainConfig) -> Any:
    """The fp32 model saved at cfg.init, its position limit raised to cfg.context if lower."""
    from transformers import AutoModelForCausalLM

    if not (Path(cfg.init) / "config.json").is_file():
        raise ConfigError(f"--init {cfg.init} is not a model folder (no config.json)")
    model = AutoModelForCausalLM.from_pretrained(
        cfg.init, dtype=torch.float32, attn_implementation="sdpa"
    )
    model.config.max_position_embeddings = max(model.config.max_position_embeddings, cfg.context)
    return model


def check_vocab(model: Any, tok: Any) -> None:
    """Refuse a tokenizer with ids beyond the model's embedding table (a wrong --tokenizer)."""
    rows = model.get_input_embeddings().num_embeddings
    if len(tok) > rows:
        raise ConfigError(
            f"the tokenizer has {len(tok)} tokens but the --init model embeds only {rows}",
            hint="drop --tokenizer to use the --init folder's own tokenizer",
        )


def use_autocast(cfg: PretrainConfig, device: torch.device) -> bool:
    """Whether to run forward passes under bf16 autocast (auto: on CUDA only)."""
    return cfg.amp == "bf16" or (cfg.amp == "auto" and device.type == "cuda")


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool | None:
    """Whether the CPU computes bf16 natively (AVX-512 BF16 or AMX); None if unknown."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    flags = next((ln for ln in cpuinfo.splitlines() if ln.startswith("flags")), None)
    if flags is None:
        return None
    have = set(flags.split(":", 1)[-1].split())
    return bool(have & {"avx512_bf16", "amx_bf16"})


def warn_emulated_bf16(cfg: PretrainConfig, device: torch.device) -> str | None:
    """A warning when bf16 autocast would run emulated on this CPU (many times slower)."""
    if device.type != "cpu" or cfg.amp != "bf16" or cpu_has_native_bf16() is not False:
        return None
    return (
        "warning: --amp bf16 on a CPU without AVX-512 BF16 or AMX runs emulated bf16 "
        "(measured about 20x slower than fp32 on an AVX2 EPYC); use --amp off here"
    )


def probe_steps(cfg: PretrainConfig) -> int:
    """Steps timed before a time budget fixes the total: within the warm-up, so the LR of
    the probed steps does not depend on the total and `--steps N` reproduces the run."""
    return max(3, min(20, cfg.warmup))


def fit_steps(cfg: PretrainConfig, done: int, elapsed: float, seconds_per_step: float) -> int:
    """Total steps that end the run within cfg.time_budget (at least `done`, at most cfg.steps)."""
    left = max(0.0, cfg.time_budget - elapsed)
    return max(done, min(cfg.steps, done + int(left / max(seconds_per_step, 1e-9))))


def learning_rate(cfg: PretrainConfig, step: int) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to lr / 10 at the last step."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, progress))))


def load_or_train_tokenizer(cfg: PretrainConfig) -> Any:
    """The tokenizer at cfg.tokenizer, or a freshly trained demo tokenizer."""
    if cfg.tokenizer is not None:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(cfg.tokenizer)
    from agentrt.demo.tokenizer import build_tokenizer

    return build_tokenizer(
        vocab_size=cfg.vocab_size, documents=cfg.tokenizer_documents, seed=cfg.seed
    )


def pretrain(cfg: PretrainConfig, *, progress: bool = True) -> dict[str, Any]:
    """Train and save the model; returns the report (final/held-out loss, parameters, time)."""
    from tqdm.auto import tqdm

    device = torch.device(
        "cuda" if cfg.device == "auto" and torch.cuda.is_available() else
        ("cpu" if cfg.device == "auto" else cfg.device)
    )  # fmt: skip
    cfg.out.mkdir(parents=True, exist_ok=True)
    budget = cfg.time_budget
    if cfg.init is not None and cfg.tokenizer is None:
        cfg = dataclasses.replace(cfg, tokenizer=cfg.init)  # its own tokenizer
    tok = load_or_train_tokenizer(cfg)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, tok) if cfg.init is None else load_init(cfg)
    check_vocab(model, tok)
    model = model.to(device).train()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": rest, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=(0.9, 0.95),
    )
    autocast = use_autocast(cfg, device)
    if (warning := warn_emulated_bf16(cfg, device)) is not None:
        print(warning, file=sys.stderr)
    loader = torch.utils.data.DataLoader(
        BlockBatches(tok, cfg), batch_size=None, shuffle=False, num_workers=cfg.workers
    )
    log_path = cfg.out / "pretrain_log.jsonl"
    start, tokens, loss_value = time.perf_counter(), 0, float("nan")
    probe_start = start
    with (
        log_path.open("w") as log,
        tqdm(total=cfg.steps, desc="pretrain", disable=not progress) as bar,
    ):
        for step, (ids, labels, weights) in enumerate(loader):
            if step >= cfg.steps:
                break
            if cfg.time_budget and step == probe_steps(cfg):
                timed = time.perf_counter() - probe_start
                total = fit_steps(cfg, step, time.perf_counter() - start, timed / (step - 1))
                cfg = dataclasses.replace(cfg, steps=total, time_budget=0.0)
                bar.total = total
                bar.refresh()
                if step >= cfg.steps:
                    break
            if step == 1:
                probe_start = time.perf_counter()  # step 0 pays one-off costs
            for group in opt.param_groups:
                group["lr"] = learning_rate(cfg, step)
            ids, labels, weights = ids.to(device), labels.to(device), weights.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                loss = weighted_loss(model, ids, labels, weights)
            loss.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
            opt.step()
            opt.zero_grad(set_to_none=True)
            tokens += ids.numel()
            loss_value = float(loss.detach())
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps - 1:
                bar.set_postfix(loss=f"{loss_value:.3f}")
                elapsed = time.perf_counter() - start
                row = {"step": step, "loss": loss_value, "lr": learning_rate(cfg, step),
                       "grad_norm": grad_norm, "tokens": tokens, "elapsed_s": elapsed}  # fmt: skip
                log.write(json.dumps(row) + "\n")
                log.flush()
            if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps:
                partial = {"steps": step + 1, "final_loss": loss_value, "partial": True}
                save(model, tok, cfg, partial)
                model.train()
    report = {
        "steps": cfg.steps,
        "final_loss": loss_value,
        "heldout_loss": heldout_loss(model, tok, cfg, device),
        "parameters": sum(p.numel() for p in model.parameters()),
        "tokens": tokens,
        "seconds": time.perf_counter() - start,
        "device": str(device),
        "time_budget": budget,  # the steps above were fitted to it (0: --steps as given)
        "model_config": {k: getattr(model.config, k) for k in SHAPE_KEYS},
    }
    save(model, tok, cfg, report)
    return report


@torch.no_grad()
def heldout_loss(model: Any, tok: Any, cfg: PretrainConfig, device: torch.device) -> float | None:
    """Mean loss on `heldout_blocks` blocks drawn from indices never trained on."""
    if cfg.heldout_blocks == 0:
        return None
    model.eval()
    held = dataclasses.replace(cfg, batch_size=1, warm_steps=0)
    batches = BlockBatches(tok, held, offset=HELDOUT_OFFSET)
    losses = []
    for i in range(cfg.heldout_blocks):
        ids, labels, weights = (t.to(device) for t in batches[i])
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_autocast(cfg, device)):
            losses.append(float(weighted_loss(model, ids, labels, weights)))
    model.train()
    return sum(losses) / len(losses)


def save(model: Any, tok: Any, cfg: PretrainConfig, report: dict[str, Any]) -> None:
    """Write the HF folder (weights in save_dtype, tokenizer, generation config) and the JSONs."""
    model.eval()
    if cfg.save_dtype == "bfloat16":
        model = copy.deepcopy(model).to(torch.bfloat16)  # training may go on in fp32
    model.generation_config.eos_token_id = [
        tok.convert_tokens_to_ids("<|im_end|>"),
        tok.convert_tokens_to_ids(DOC_END),
    ]
    model.generation_config.pad_token_id = tok.convert_tokens_to_ids(DOC_END)
    model.save_pretrained(cfg.out)
    tok.save_pretrained(cfg.out)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(cfg).items()}
    (cfg.out / "pretrain_config.json").write_text(json.dumps(settings, indent=2) + "\n")
    (cfg.out / "pretrain_report.json").write_text(json.dumps(report, indent=2) + "\n")


def parse_args(argv: list[str] | None = None) -> PretrainConfig:
    """A PretrainConfig from command-line flags (one flag per field)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for f in dataclasses.fields(PretrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.name == "out":
            parser.add_argument(flag, type=Path, required=True, help="output model folder")
        elif f.name == "tokenizer":
            parser.add_argument(flag, type=Path, default=None, help="load this tokenizer folder")
        elif f.name == "init":
            parser.add_argument(
                flag, type=Path, default=None, help="continue from this model folder's weights"
            )
        else:
            parser.add_argument(
                flag, type=type(f.default), default=f.default, help=f"default {f.default}"
            )
    return PretrainConfig(**vars(parser.parse_args(argv)))


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    report = pretrain(parse_args(argv))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
