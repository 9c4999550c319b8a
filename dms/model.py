"""`DMSModel`: an HF Llama-family decoder whose attention and cache are replaced by DMS."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from agentrt.dms.adapters import attach_adapters, has_adapters
from agentrt.dms.architecture import ArchSpec, arch_spec
from agentrt.dms.cache_spec import CacheSpec
from agentrt.dms.config import DMSConfig
from agentrt.dms.cpu_layout import prepare_cpu_linears
from agentrt.dms.dense_forward import (
    ReferenceOutput,
    TrainOutput,
    dense_forward,
    reference_mask_fn,
    train_mask_fn,
)
from agentrt.dms.kv_dtype import resolve_kv_dtype
from agentrt.dms.kv_pool import KVPool
from agentrt.dms.serving import CachePolicy, StepItem, serve_step
from agentrt.dms.session_cache import SessionCache
from agentrt.errors import ModelLoadError


class DMSModel(nn.Module):
    """Wraps an HF causal LM; reuses its modules and weights, replaces attention and cache.

    `dms` None means a plain model served dense (no decisions, no channel zeroing).
    """

    def __init__(
        self, hf_model: nn.Module, dms: DMSConfig | None = None, tokenizer: Any = None
    ) -> None:
        super().__init__()
        self.hf = hf_model
        self.arch: ArchSpec = arch_spec(hf_model)
        self.tokenizer = tokenizer
        if dms is not None and dms.separate_alpha and not has_adapters(hf_model):
            raise ModelLoadError(
                "adapter-flavour DMS config but the model has no dms_proj_alpha adapters",
                hint="call agentrt.dms.add_adapters(model, config) to retrofit a plain model",
            )
        self.dms = dms
        self.source_dir: Path | None = None  # the folder it was loaded from (set by load_model)
        self.weight_delta: str | None = None  # digest of a LoRA merged into the weights, if any

    # -- facts -------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Device of the weights."""
        return self.hf.model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the weights: the compute dtype (the KV storage dtype is the pool's)."""
        return self.hf.model.embed_tokens.weight.dtype

    @property
    def vocab_size(self) -> int:
        """Rows of the input embedding (follows `resize_token_embeddings`)."""
        return int(self.hf.get_input_embeddings().num_embeddings)

    @property
    def evicting(self) -> bool:
        """True when decisions evict tokens (a DMS config with eviction enabled)."""
        return self.dms is not None and not self.dms.disable_eviction

    # -- forwards ----------------------------------------------------------------------
    def forward_train(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        noise_seed: int | None,
        teacher: bool = False,
        tiled: bool = True,
        head: bool = True,
    ) -> TrainOutput:
        """Dense training forward: Gumbel-sigmoid decisions, soft mask; teacher=True disables eviction.

        input_ids [B, T]; attention_mask [B, T] (1 = token, 0 = pad) or None.
        noise_seed None disables the Gumbel noise (deterministic soft decisions).
        tiled=False materialises the dense [B, H_q, T, T] soft mask (the reference path).
        head=False returns the last residual stream [B, T, hidden] in `logits` instead of the
        logits (the caller applies `lm_logits` in chunks, see `retrofit.loss.hidden_kl`).
        """
        gen = None
        if noise_seed is not None:
            gen = torch.Generator().manual_seed(int(noise_seed))
        mask_fn = train_mask_fn(self.arch, self.dms, gen, teacher, tiled)
        logits, decisions = dense_forward(
            self.hf, self.arch, self.dms, input_ids, attention_mask, mask_fn, head=head
        )
        if decisions[0] is None:
            return TrainOutput(logits=logits, decisions=None, eviction_fraction=None)
        dec = torch.stack(decisions)  # [L, B, T, H_kv]
        if attention_mask is None:
            frac = dec.mean(dim=(1, 2))
        else:
            w = attention_mask.to(dec.dtype)[None, :, :, None]
            frac = (dec * w).sum(dim=(1, 2)) / w.sum(dim=(1, 2)).clamp(min=1)
        return TrainOutput(logits=logits, decisions=dec, eviction_fraction=frac)

    @torch.no_grad()
    def forward_reference(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> ReferenceOutput:
        """Dense forward with hard decisions and the materialised DMS mask: the serving oracle."""
        mask_fn = reference_mask_fn(self.arch, self.dms)
        logits, decisions = dense_forward(
            self.hf, self.arch, self.dms, input_ids, attention_mask, mask_fn
        )
        dec = None if decisions[0] is None else torch.stack(decisions)
        return ReferenceOutput(logits=logits, decisions=dec)

    # -- serving -----------------------------------------------------------------------
    @property
    def window(self) -> int:
        """The DMS window w the cache is built for (0 when nothing is ever evicted)."""
        return self.dms.window_size if self.evicting else 0

    def cache_spec(
        self, block_size: int = 16, kv_dtype: str | torch.dtype | None = None
    ) -> CacheSpec:
        """The paged cache layout for this model; K/V stored in `kv_dtype` (None: the model dtype).

        `kv_dtype` takes what `agentrt.dms.kv_dtype.resolve_kv_dtype` takes ("auto", "model",
        "bfloat16", "float16", "float32" or a torch.dtype).
        """
        return CacheSpec(
            num_layers=self.arch.num_layers,
            num_kv_heads=self.arch.num_kv_heads,
            head_dim=self.arch.head_dim,
            block_size=block_size,
            dtype=resolve_kv_dtype(kv_dtype, self.dtype, self.device),
            window=self.window,
        )

    def make_pool(
        self,
        kv_budget: str | int | None = None,
        *,
        num_blocks: int | None = None,
        block_size: int = 16,
        kv_dtype: str | torch.dtype | None = None,
    ) -> KVPool:
        """A KV pool on the model's device, sized by a byte budget ("2GiB") or a block count.

        K/V are stored in `kv_dtype` (None: the model dtype; see `cache_spec`).
        """
        spec = self.cache_spec(block_size, kv_dtype)
        if num_blocks is not None:
            return KVPool(spec, num_blocks, device=self.device)
        return KVPool.from_budget(spec, "1GiB" if kv_budget is None else kv_budget, self.device)

    def new_cache(self, pool: KVPool, *, window: int | None = None) -> SessionCache:
        """An empty session cache in `pool` (window: w of the eviction rule, default the model's)."""
        w = self.window if window is None else window
        return SessionCache(pool, self.arch.num_layers, self.arch.num_kv_heads, w)

    def prepare_for_serving(self) -> None:
        """Lay the weights out for the serving step on their device (`prepare_cpu_linears`)."""
        prepare_cpu_linears(self.hf)

    def step(
        self,
        batch: list[StepItem],
        *,
        decode_kernel: bool | None = None,
        policy: CachePolicy | None = None,
    ) -> list[torch.Tensor]:
        """One ragged serving step over several sessions (see `agentrt.dms.serving`)."""
        return serve_step(self, batch, decode_kernel=decode_kernel, policy=policy)

    # -- persistence -------------------------------------------------------------------
    def save_pretrained(self, path: str | Path) -> Path:
        """Write an HF folder: config with dms_* keys, safetensors incl. adapters, tokenizer."""
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        cfg = self.hf.config
        stale = [k for k in list(vars(cfg)) if k.startswith("dms_")]
        for key in stale:
            delattr(cfg, key)
        if self.dms is not None:
            self.dms.write_to_hf_config(cfg)
        self.hf.save_pretrained(out)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(out)
        return out


def add_adapters(
    model: DMSModel | nn.Module, config: DMSConfig | None = None
) -> DMSModel | nn.Module:
    """Retrofit a plain model with zero-initialised adapters (z = −b: nearly no eviction at start).

    For a `DMSModel` the config switches to the adapter flavour (`config` or the model's own).
    """
    hf = model.hf if isinstance(model, DMSModel) else model
    if not has_adapters(hf):
        attach_adapters(hf)
    if isinstance(model, DMSModel):
        base = config or model.dms or DMSConfig()
        model.dms = base.replace(separate_alpha=True)
    return model
