"""Eval results: one row per (task, length, policy, CR), text-mode rows, the table and the JSON."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Condition:
    """A cache setting under test: a policy and the requested compression ratio."""

    policy: str  # dense | dms | window | streaming | tova | h2o
    cr: float | None  # requested CR (1 for dense; None for dms: the model's own decisions)

    @property
    def label(self) -> str:
        """'window@4x', 'dense', 'dms'."""
        return (
            self.policy
            if self.cr is None or self.policy == "dense"
            else f"{self.policy}@{self.cr:g}x"
        )


@dataclass(frozen=True)
class Row:
    """Accuracy and achieved compression of one condition on one task at one length."""

    task: str
    length: int  # requested prompt length (tokens)
    policy: str
    cr: float | None  # requested CR
    budget: int | None  # slots per stream (baselines)
    n: int  # items
    accuracy: float  # mean score
    achieved_cr: float  # mean over items of tokens × streams / slots at the end of the chat
    prompt_tokens: float  # mean rendered prompt length
    tool_calls_valid: float | None = None  # agent: share of items whose tool calls all validate
    errors: int = 0  # items cut short (template rewrote history, tool turn too long)


@dataclass(frozen=True)
class TextRow:
    """Teacher-forced perplexity of one condition on the user's text, and its KL to dense."""

    length: int  # tokens scored
    policy: str
    cr: float | None
    budget: int | None
    ppl: float
    nll: float  # mean negative log-likelihood, nats/token
    kl: float  # mean KL(dense ‖ condition) over predicted positions, nats/token
    achieved_cr: float


@dataclass
class EvalResult:
    """Everything one `evaluate` / `evaluate_text` run measured."""

    rows: list[Row] = field(default_factory=list)
    text_rows: list[TextRow] = field(default_factory=list)
    items: list[dict[str, Any]] = field(default_factory=list)  # per item × condition
    notes: list[str] = field(default_factory=list)  # skipped conditions and warnings
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN/inf become None)."""
        return _finite(
            {
                "config": self.config,
                "rows": [asdict(r) for r in self.rows],
                "text": [asdict(r) for r in self.text_rows],
                "notes": self.notes,
                "items": self.items,
            }
        )

    def save_json(self, path: str | Path) -> Path:
        """Write `to_dict()` as indented JSON."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return out

    def format_table(self) -> str:
        """Plain-text tables (tasks, then text mode) plus the notes."""
        parts = []
        if self.rows:
            head = ["task", "length", "policy", "CR req", "budget", "accuracy", "CR achieved", "n"]
            body = [
                [
                    r.task,
                    str(r.length),
                    r.policy,
                    "-" if r.cr is None else f"{r.cr:g}",
                    "-" if r.budget is None else str(r.budget),
                    f"{100 * r.accuracy:.1f}%",
                    f"{r.achieved_cr:.2f}",
                    str(r.n),
                ]
                for r in self.rows
            ]
            parts.append(_grid(head, body))
        if self.text_rows:
            head = ["length", "policy", "CR req", "budget", "ppl", "KL to dense", "CR achieved"]
            body = [
                [
                    str(r.length),
                    r.policy,
                    "-" if r.cr is None else f"{r.cr:g}",
                    "-" if r.budget is None else str(r.budget),
                    f"{r.ppl:.3f}",
                    f"{r.kl:.4f}",
                    f"{r.achieved_cr:.2f}",
                ]
                for r in self.text_rows
            ]
            parts.append(_grid(head, body))
        if self.notes:
            parts.append("\n".join(f"note: {n}" for n in self.notes))
        return "\n\n".join(parts)


def _grid(head: list[str], body: list[list[str]]) -> str:
    """Left-aligned columns with a dashed rule under the header."""
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in [head, *body]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def _finite(obj: Any) -> Any:
    """Replace non-finite floats by None, recursively (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj
