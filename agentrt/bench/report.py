"""Suite output: `<suite>.json` (numbers + machine + command), `<suite>.md` (a table), `<suite>.png`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt_spread(stat: dict[str, float], digits: int = 1, scale: float = 1.0) -> str:
    """'median (min–max)' of a `method.spread` dict, values times `scale` (more digits below 1)."""
    med, lo, hi = (stat[k] * scale for k in ("median", "min", "max"))
    if 0 < abs(med) < 1:
        digits = max(digits, 3)
    return f"{med:.{digits}f} ({lo:.{digits}f}–{hi:.{digits}f})"


def header(result: dict[str, Any]) -> str:
    """The lines above every table: what, when, where, with which command."""
    m = result["machine"]
    where = m["card"] or f"{m['cpu']} × {m['cpu_count']} cores ({m['torch_threads']} threads)"
    return (
        f"**{result['suite']}** on `{result['model']}` — {m['date']}, {where}, "
        f"1-min load {m['load_avg_1m']}, torch {m['versions']['torch']}\n\n"
        f"`{result['command']}`\n"
    )


def bar_plot(
    path: Path,
    *,
    title: str,
    ylabel: str,
    groups: Sequence[str],
    series: dict[str, Sequence[dict[str, float] | float | None]],
    log: bool = False,
) -> Path:
    """Grouped bars (one group per x label, one bar per series) with min–max error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.8))
    width = 0.8 / max(len(series), 1)
    for i, (name, values) in enumerate(series.items()):
        xs, meds, errs = [], [], [[], []]
        for g, v in enumerate(values):
            if v is None:
                continue
            stat = v if isinstance(v, dict) else {"median": v, "min": v, "max": v}
            xs.append(g - 0.4 + width * (i + 0.5))
            meds.append(stat["median"])
            errs[0].append(stat["median"] - stat["min"])
            errs[1].append(stat["max"] - stat["median"])
        ax.bar(xs, meds, width, yerr=errs, capsize=3, label=name)
    ax.set_xticks(list(range(len(groups))), list(groups))
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if log:
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_suite(result: dict[str, Any], out: Path, table: str) -> list[Path]:
    """Write `<suite>.json` and `<suite>.md` (header + table + plot link) into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    name = result["suite"]
    json_path, md_path = out / f"{name}.json", out / f"{name}.md"
    json_path.write_text(json.dumps(result, indent=2))
    md_path.write_text(f"{header(result)}\n{table}\n\n![{name}]({name}.png)\n")
    return [json_path, md_path]
