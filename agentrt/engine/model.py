"""`ServingModel`: what the engine needs of a model, as a typed protocol.

`agentrt.dms.DMSModel` implements it; the engine, the swap manager and persistence
never reach past these names into the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch
    from torch import nn

    from agentrt.dms.architecture import ArchSpec
    from agentrt.dms.config import DMSConfig
    from agentrt.dms.kv_pool import KVPool
    from agentrt.dms.serving import CachePolicy, StepItem
    from agentrt.dms.session_cache import SessionCache


class ServingModel(Protocol):
    """A DMS decoder that serves ragged steps over session caches in one paged pool."""

    hf: nn.Module  # the wrapped HF model (weights and config; fingerprinted on save)
    arch: ArchSpec  # layers, heads, head_dim, vocab
    dms: DMSConfig | None  # None: a plain model served dense
    tokenizer: Any  # an HF tokenizer, or None
    source_dir: Path | None  # the folder it was loaded from, if any

    @property
    def window(self) -> int:
        """DMS window w its caches are built for."""
        ...

    @property
    def vocab_size(self) -> int:
        """Token ids the model accepts: 0..vocab_size − 1."""
        ...

    @property
    def device(self) -> torch.device:
        """Device of the weights and the pool."""
        ...

    def make_pool(
        self,
        kv_budget: str | int | None = None,
        *,
        num_blocks: int | None = None,
        block_size: int,
        kv_dtype: str | torch.dtype | None = None,
    ) -> KVPool:
        """A KV pool sized by a byte budget or a block count, K/V stored in `kv_dtype`."""
        ...

    def new_cache(self, pool: KVPool, *, window: int | None = None) -> SessionCache:
        """An empty session cache in `pool`."""
        ...

    def prepare_for_serving(self) -> None:
        """Lay the weights out for the serving step (called once by each engine, idempotent)."""
        ...

    def step(
        self, batch: list[StepItem], *, policy: CachePolicy | None = None
    ) -> list[torch.Tensor]:
        """One ragged forward over the batch; logits [V] per item."""
        ...
