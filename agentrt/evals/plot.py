"""PNG plots of eval results: accuracy vs achieved compression, and KL vs compression (text mode)."""

from __future__ import annotations

from pathlib import Path

from agentrt.evals.result import EvalResult

MARKERS = {"dense": "*", "dms": "D", "window": "s", "streaming": "^", "tova": "o", "h2o": "v"}


def plot_accuracy(result: EvalResult, path: str | Path) -> Path:
    """One panel per task (a row per length); one line per policy: accuracy vs achieved CR."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r.task for r in result.rows))
    lengths = sorted({r.length for r in result.rows})
    fig, axes = plt.subplots(
        len(lengths), len(tasks), figsize=(3.6 * len(tasks), 3.0 * len(lengths)), squeeze=False
    )
    for i, length in enumerate(lengths):
        for j, task in enumerate(tasks):
            ax = axes[i][j]
            rows = [r for r in result.rows if r.task == task and r.length == length]
            for policy in dict.fromkeys(r.policy for r in rows):
                pts = sorted((r.achieved_cr, 100 * r.accuracy) for r in rows if r.policy == policy)
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, marker=MARKERS.get(policy, "o"), label=policy)
                if policy == "dense":
                    ax.axhline(ys[0], color="grey", linestyle=":", linewidth=1)
            _log2_axis(ax)
            ax.set_ylim(-5, 105)
            ax.set_title(f"{task} @ {length} tokens", fontsize=10)
            ax.grid(True, alpha=0.3)
            if i == len(lengths) - 1:
                ax.set_xlabel("achieved compression ratio")
            if j == 0:
                ax.set_ylabel("accuracy (%)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return _save(fig, path)


def plot_text(result: EvalResult, path: str | Path) -> Path:
    """KL to dense vs achieved CR, one line per policy and length (text mode)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.0))
    keys = dict.fromkeys((r.policy, r.length) for r in result.text_rows if r.policy != "dense")
    for policy, length in keys:
        pts = sorted(
            (r.achieved_cr, r.kl)
            for r in result.text_rows
            if r.policy == policy and r.length == length
        )
        xs, ys = zip(*pts, strict=True)
        ax.plot(xs, ys, marker=MARKERS.get(policy, "o"), label=f"{policy} ({length} tok)")
    _log2_axis(ax)
    ax.set_xlabel("achieved compression ratio")
    ax.set_ylabel("KL(dense ‖ policy), nats/token")
    ax.grid(True, alpha=0.3)
    if keys:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


MIN_SPAN = 2.5  # the x axis spans at least this factor, so nearly equal ratios plot together


def _log2_axis(ax) -> None:
    """A base-2 log x axis labelled 1, 2, 4, 8 (not 2^k), at least MIN_SPAN wide.

    Without the floor, points at one ratio (6.169 and 6.170) would be drawn at opposite
    edges of an axis that spans only their rounding difference.
    """
    from matplotlib.ticker import FuncFormatter

    ax.set_xscale("log", base=2)
    lo, hi = ax.get_xlim()
    if lo > 0 and hi / lo < MIN_SPAN:
        mid = (lo * hi) ** 0.5
        ax.set_xlim(mid / MIN_SPAN**0.5, mid * MIN_SPAN**0.5)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


def _save(fig, path: str | Path) -> Path:
    """Write the figure as PNG and close it."""
    import matplotlib.pyplot as plt

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight")  # a wide legend stays in the picture
    plt.close(fig)
    return out
