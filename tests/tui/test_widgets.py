"""The text the widgets draw: bars, ages, sizes, the status line (no app needed)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from agentrt.tui.widgets.format import age, human_bytes, human_count
from agentrt.tui.widgets.session_panel import head_grid, layer_bars
from agentrt.tui.widgets.status_bar import Status, status_line


def test_layer_bars_scale_to_the_largest_ratio() -> None:
    lines = layer_bars([1.0, 2.0, 4.0]).plain.splitlines()
    assert len(lines) == 6  # 4 chart rows, the axis, the summary
    assert lines[0].rstrip().endswith("4.0×")
    assert lines[3].startswith("██ ██ ██")  # the 1× column fills one row of four
    assert lines[2].startswith("   ██ ██")  # the 2× column two
    assert lines[0].startswith("      ██")  # only the 4× column reaches the top row
    assert lines[4].startswith("L0") and lines[4].endswith("L2")
    assert "mean 2.33×" in lines[5]


def test_head_grid_has_one_cell_per_head() -> None:
    lines = head_grid([[1.0, 8.0], [2.0, 4.0]]).plain.splitlines()
    assert lines[0].startswith("L0  ▁█") and "max 8.0×" in lines[0]
    assert len(lines) == 2


def test_formatters() -> None:
    now = datetime(2026, 1, 2, tzinfo=UTC)
    assert age(now - timedelta(seconds=5), now) == "now"
    assert age(now - timedelta(minutes=7), now) == "7m"
    assert age(now - timedelta(hours=3), now) == "3h"
    assert age(now - timedelta(days=2), now) == "2d"
    assert age(None, now) == "-"
    assert human_bytes(512) == "512 B" and human_bytes(1536) == "1.5 KiB"
    assert human_count(999) == "999" and human_count(12345) == "12.3k"


def test_status_line_shows_kv_against_dense() -> None:
    line = status_line(Status("m", "cpu", 12.5, 1024, 8192, 8.0, 0.25, "generating"))
    assert line == (
        "m │ cpu │ 12.5 tok/s │ KV 1.0 KiB / dense 8.0 KiB │ CR 8.00× │ pool 25% │ generating"
    )
    assert "- tok/s" in status_line(Status())
