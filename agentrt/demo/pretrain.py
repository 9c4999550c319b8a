"""Pretrain the demo model: a small Qwen3 decoder on task-suite conversations (docs/DEMO_MODEL.md).

`python -m agentrt.demo.pretrain --out DIR --steps N --context 2048 --device auto` trains
the demo tokenizer (or loads `--tokenizer DIR`), then the model, and writes an HF folder
that `agentrt.dms.load_model` serves: config, safetensors, tokenizer, plus
`pretrain_config.json`, `pretrain_log.jsonl` and `pretrain_report.json`. The batches are a
pure function of (seed, step), whatever `--workers` is.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from agentrt.demo.corpus import DOC_END, training_block
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
    loss_on: str = "all"  # all | assistant (mask prompt tokens)
    min_length: int = 128  # shortest prompt sampled into a block
    hidden_size: int = 256
    layers: int = 6
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 64
    intermediate_size: int = 640
    rope_theta: float = 10000.0
    vocab_size: int = 2048  # BPE merges target (plus specials)
    tokenizer: Path | None = None  # load this tokenizer instead of training one
    tokenizer_documents: int = 2000
    workers: int = 0  # DataLoader processes building blocks
    log_every: int = 50
    heldout_blocks: int = 8
    save_dtype: str = "float32"  # float32 | bfloat16

    def __post_init__(self) -> None:
        problems = [
            f"{k}={getattr(self, k)} must be >= {lo}"
            for k, lo in (
                ("steps", 1), ("context", 64), ("batch_size", 1), ("warmup", 0), ("layers", 1),
                ("heads", 1), ("kv_heads", 1), ("head_dim", 16), ("hidden_size", 16),
                ("intermediate_size", 1), ("vocab_size", 300), ("workers", 0), ("log_every", 1),
                ("heldout_blocks", 0), ("min_length", 64), ("tokenizer_documents", 1),
            )
            if getattr(self, k) < lo
        ]  # fmt: skip
        if self.heads % max(1, self.kv_heads):
            problems.append(f"heads={self.heads} must be a multiple of kv_heads={self.kv_heads}")
        if self.loss_on not in ("all", "assistant"):
            problems.append(f"loss_on={self.loss_on!r} must be 'all' or 'assistant'")
        if self.save_dtype not in ("float32", "bfloat16"):
            problems.append(f"save_dtype={self.save_dtype!r} must be float32 or bfloat16")
        if not self.lr > 0:
            problems.append(f"lr={self.lr} must be > 0")
        if problems:
            raise ConfigError(
                "; ".join(problems), hint="see python -m agentrt.demo.pretrain --help"
            )


class BlockBatches(torch.utils.data.Dataset):
    """Batch `step` = blocks step·B … step·B + B − 1 of the seeded recipe (ids, labels [B, T])."""

    def __init__(self, tokenizer: Any, cfg: PretrainConfig, offset: int = 0) -> None:
        self.tokenizer, self.cfg, self.offset = tokenizer, cfg, offset

    def __len__(self) -> int:
        return self.cfg.steps

    def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        rows = [
            training_block(
                self.tokenizer,
                seed=cfg.seed,
                index=self.offset + step * cfg.batch_size + r,
                context=cfg.context,
                min_length=cfg.min_length,
                loss_on=cfg.loss_on,
            )
            for r in range(cfg.batch_size)
        ]
        ids = torch.tensor([r[0] for r in rows], dtype=torch.long)  # [B, T]
        labels = torch.tensor([r[1] for r in rows], dtype=torch.long)  # [B, T]
        return ids, labels


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
    tok = load_or_train_tokenizer(cfg)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, tok).to(device).train()
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
    autocast = device.type == "cuda"
    loader = torch.utils.data.DataLoader(
        BlockBatches(tok, cfg), batch_size=None, shuffle=False, num_workers=cfg.workers
    )
    log_path = cfg.out / "pretrain_log.jsonl"
    start, tokens, loss_value = time.perf_counter(), 0, float("nan")
    with (
        log_path.open("w") as log,
        tqdm(total=cfg.steps, desc="pretrain", disable=not progress) as bar,
    ):
        for step, (ids, labels) in enumerate(loader):
            for group in opt.param_groups:
                group["lr"] = learning_rate(cfg, step)
            ids, labels = ids.to(device), labels.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                loss = model(input_ids=ids, labels=labels).loss
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
    report = {
        "steps": cfg.steps,
        "final_loss": loss_value,
        "heldout_loss": heldout_loss(model, tok, cfg, device),
        "parameters": sum(p.numel() for p in model.parameters()),
        "tokens": tokens,
        "seconds": time.perf_counter() - start,
        "device": str(device),
    }
    save(model, tok, cfg, report)
    return report


@torch.no_grad()
def heldout_loss(model: Any, tok: Any, cfg: PretrainConfig, device: torch.device) -> float | None:
    """Mean loss on `heldout_blocks` blocks drawn from indices never trained on."""
    if cfg.heldout_blocks == 0:
        return None
    model.eval()
    held = dataclasses.replace(cfg, batch_size=1)
    batches = BlockBatches(tok, held, offset=HELDOUT_OFFSET)
    losses = []
    for i in range(cfg.heldout_blocks):
        ids, labels = batches[i]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            losses.append(float(model(input_ids=ids.to(device), labels=labels.to(device)).loss))
    model.train()
    return sum(losses) / len(losses)


def save(model: Any, tok: Any, cfg: PretrainConfig, report: dict[str, Any]) -> None:
    """Write the HF folder (weights in save_dtype, tokenizer, generation config) and the JSONs."""
    model.eval()
    if cfg.save_dtype == "bfloat16":
        model.to(torch.bfloat16)
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
