"""``benchmarks/time_to_accuracy.py``: the clock of each run (median epoch, logged, or one given epoch time), the
figure and its summary from runs' metrics and evaluations, and one-line errors with exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import time_to_accuracy as tta  # noqa: E402

RECORDS = [{"seconds": s, "val_acc": a} for s, a in ((400.0, 0.1), (100.0, 0.2), (120.0, 0.3), (90.0, 0.4))]


def test_clocks():
    np.testing.assert_allclose(tta.minutes(RECORDS, "measured"), np.array([400, 500, 620, 710]) / 60)
    np.testing.assert_allclose(tta.minutes(RECORDS, "median"), np.arange(1, 5) * 110 / 60)  # median of 4: 110
    np.testing.assert_allclose(tta.minutes(RECORDS, "median", 60.0), np.arange(1, 5.0))


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / "time_to_accuracy.py"), *args],
                          capture_output=True, text=True, timeout=300)


def test_figure_and_summary(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    ev = tmp_path / "best.eval_test.json"
    ev.write_text(json.dumps({"test_accuracy": 0.45, "tta": "flip", "plain": {"test_accuracy": 0.42}}))
    proc = _run("--run", f"new={run}:{ev}", "--out", str(tmp_path / "fig.png"))
    assert proc.returncode == 0, proc.stderr
    assert "new: 4 epochs, 7.3 min, last validation 40.00%, test 42.00%, with flip views 45.00%" in proc.stdout
    assert (tmp_path / "fig.png").stat().st_size > 0


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    for args in (["--run", f"x={tmp_path / 'none'}"], ["--run", "no-label"],
                 ["--run", f"x={REPO}:{tmp_path / 'none.json'}"], ["--run", "x=y", "--epoch-seconds", "-1"]):
        proc = _run(*args, "--out", str(tmp_path / "fig.png"))
        assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, (args, proc.stderr)
    assert not (tmp_path / "fig.png").exists()
