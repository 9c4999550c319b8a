"""What the suites feed the models: the compared models, deterministic text, HF baselines."""

from __future__ import annotations

import copy
import functools
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from agentrt.bench.method import Sample, timed


@contextmanager
def quiet_hf():
    """Silence transformers' deprecation chatter about cache keyword names inside a benchmark."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


@dataclass
class BenchModels:
    """The compared models: `dms` (adapters or the model's own DMS) and `dense` (eviction off)."""

    dms: Any  # DMSModel serving DMS (None when the model has no DMS to serve)
    dense: Any  # DMSModel with eviction disabled, served by the "agentrt dense" engines
    label: str  # what the DMS side is, for tables ("adapters: <path>", "model's own DMS")
    path: str | None = None  # the model folder, for suites that load it again in a new process
    adapters: Path | None = None  # the adapter folder the DMS side was loaded with, if any

    @functools.cached_property
    def baseline(self) -> Any:
        """`hf_baseline(dense)`: the HF side, weights as HF loads them (copied on first use,
        so suites without an HF side never pay for the copy)."""
        return hf_baseline(self.dense)

    @property
    def served(self) -> Any:
        """The model a session is served with: the DMS side, else the dense one."""
        return self.dms if self.dms is not None else self.dense

    def describe(self) -> dict[str, Any]:
        """JSON-able description of both sides."""
        return {
            "dms": self.label,
            "dms_config": self.dms.dms.to_hf_dict() if self.dms and self.dms.dms else None,
            "window": self.dms.window if self.dms else None,
            "dtype": str(self.dense.dtype),
        }


def load_models(
    spec: str | None,
    *,
    device: torch.device,
    adapters: Path | None = None,
    home: Path | None = None,
    progress: bool = True,
) -> BenchModels:
    """Load `spec` twice: with DMS (from `adapters` if given, else its own) and dense."""
    from agentrt.dms import load_model
    from agentrt.models.resolve import load_resolved, resolve

    resolved = resolve(spec, home, progress=progress)
    dense = load_resolved(spec, dms="off", device=device, home=home, progress=progress)
    if adapters is not None:
        dms = load_model(resolved.path, adapters=adapters, device=device)
        return BenchModels(dms, dense, f"adapters {adapters}", resolved.path, adapters)
    dms = load_resolved(spec, dms="on", device=device, home=home, progress=progress)
    if dms.dms is None or dms.dms.disable_eviction:
        return BenchModels(None, dense, "none (model has no DMS)", resolved.path)
    return BenchModels(dms, dense, "model's own DMS", resolved.path, resolved.adapters)


def hf_baseline(model: Any) -> Any:
    """A copy of `model` whose `.hf` is laid out as `from_pretrained` leaves it: the HF side.

    An engine lays the weights of the model it serves out for its own step
    (`agentrt.dms.cpu_layout`), which plain HF modules would profit from as well; the
    baselines run on this untouched copy instead, as an HF user's model would.
    """
    from agentrt.dms.cpu_layout import undo_cpu_linears

    tokenizer = getattr(model, "tokenizer", None)
    twin = copy.deepcopy(model, memo={id(tokenizer): tokenizer})  # the tokenizer is shared
    undo_cpu_linears(twin.hf)
    return twin


def text_ids(model: Any, n: int, *, offset: int = 0) -> list[int]:
    """`n` token ids of real text (this package's own source, deterministic), from `offset`.

    A model without a tokenizer gets seeded random ids instead.
    """
    vocab = model.arch.vocab_size
    tok = model.tokenizer
    if tok is None:
        gen = torch.Generator().manual_seed(offset)
        return torch.randint(0, vocab, (n,), generator=gen).tolist()
    ids = _corpus_ids(tok)
    out: list[int] = []
    start = offset % len(ids)
    while len(out) < n:
        out.extend(ids[start : start + n - len(out)])
        start = 0
    return [i % vocab for i in out]


_CORPUS: dict[int, list[int]] = {}


def _corpus_ids(tok: Any) -> list[int]:
    """The tokenized corpus (cached per tokenizer)."""
    key = id(tok)
    if key not in _CORPUS:
        root = Path(__file__).resolve().parents[1]
        text = "\n".join(p.read_text() for p in sorted(root.rglob("*.py")))
        _CORPUS[key] = tok.encode(text, add_special_tokens=False)
    return _CORPUS[key]


class HFDecoder:
    """HF `generate` continuing a dense DynamicCache batch: the dense-cache decode baseline.

    The cache always holds every token but the last of `ids`, so each `generate(k)` runs
    exactly k forward passes of one token per row and yields k tokens per row.
    """

    def __init__(self, model: Any, rows: list[list[int]]) -> None:
        from transformers import DynamicCache

        self.model, self.hf = model, model.hf
        self.ids = torch.tensor(rows, device=model.device)  # [B, L]
        self.cache = DynamicCache()
        with torch.no_grad(), quiet_hf():
            self.hf(input_ids=self.ids[:, :-1], past_key_values=self.cache, use_cache=True)

    def step(self, k: int) -> Sample:
        """Generate k greedy tokens per row (timed)."""

        def gen() -> Any:
            with torch.no_grad(), quiet_hf():
                return self.hf.generate(
                    input_ids=self.ids,
                    attention_mask=torch.ones_like(self.ids),
                    past_key_values=self.cache,
                    max_new_tokens=k,
                    min_new_tokens=k,
                    do_sample=False,
                    pad_token_id=0,
                )

        seconds, out = timed(self.model.device, gen)
        new = out.shape[1] - self.ids.shape[1]
        assert new == k, f"HF generate made {new} tokens, asked {k}"
        self.ids = out
        return Sample(seconds, k * out.shape[0])


def hf_forward(model: Any, ids: list[int]) -> Sample:
    """One HF forward over `ids` building a dense cache (logits of the last token only)."""
    from transformers import DynamicCache

    x = torch.tensor([ids], device=model.device)

    def run() -> Any:
        with torch.no_grad(), quiet_hf():
            return model.hf(
                input_ids=x, past_key_values=DynamicCache(), use_cache=True, logits_to_keep=1
            )

    seconds, _ = timed(model.device, run)
    return Sample(seconds, len(ids))


def clone_cache(cache: Any) -> Any:
    """A deep copy of an HF cache."""
    return copy.deepcopy(cache)
