"""The 30-second soak: sessions through turns, saves, closes, reopens and a restart on a small
pool; nothing lost, replay on an unlimited pool equal, no leak, no temp or swap file left."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from agentrt.cli.main import cli


def test_soak_for_30_seconds_loses_and_leaks_nothing(tmp_path: Path, agentrt_home: Path) -> None:
    out = tmp_path / "out"
    # the default pool holds ~2.5 sessions at their longest: 3 sessions in play swap; sessions
    # retire at 300 tokens, so a quiet machine (more turns in 30 s) never outgrows the pool
    args = ["bench", "soak", "--minutes", "0.5", "--sessions", "3", "--max-session-tokens", "300"]
    args += ["--restarts", "1", "--close-prob", "0.3", "--min-turns", "10", "--out", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "soak.json").read_text())
    assert report["ok"] and not report["problems"]
    events = report["events"]
    assert events["saves"] >= 10 and events["restarts"] >= 2 and events["reopens"] >= 1
    assert report["writes"]["deltas"] >= 1 and report["writes"]["fulls"] >= 1
    assert report["lost_sessions"] == [] and report["replay_mismatches"] == []
    assert report["swap_files_left"] == 0 and report["temp_files_left"] == 0
    assert len(report["samples"]) >= 5 and (out / "soak.png").stat().st_size > 10_000
