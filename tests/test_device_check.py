"""``benchmarks/device_check.py --quick`` on the CPU: every section is written and every correctness check passes,
so the script the first GPU will run cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("environment", "correctness", "throughput", "largest_stack", "grid")


def test_quick_device_check_on_the_cpu(tmp_path):
    out = tmp_path / "dc"
    # one thread: on a CPU shared with other work, OpenMP's spinning threads make rates erratic; a large budget so
    # that a slow machine skips nothing
    cmd = [sys.executable, str(REPO / "benchmarks" / "device_check.py"), "--quick", "--device", "cpu",
           "--out", str(out), "--threads", "1", "--precisions", "fp32", "--rounds", "1", "--budget", "3000",
           "--set", f"paths.runs_dir={tmp_path}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "device_check.json").read_text())
    assert set(SECTIONS) <= set(report) and report["quick"] and report["passed"]

    env_ = report["environment"]
    assert {"torch", "cuda_version", "device_name", "device_memory_bytes", "bf16_native", "tf32_supported",
            "cpu_model", "torch_threads"} <= set(env_) and env_["torch_threads"] == 1

    checks = {(c["check"], c["executor"]): c for c in report["correctness"]}
    for ex in ("vmap", "sequential"):
        assert checks[("stack equals its members trained alone", ex)]["status"] == "pass"
        assert checks[("stack equals its members trained alone, fp32", ex)]["status"] == "pass"
        assert checks[("compiled stack equals eager stack", ex)]["status"] in ("pass", "skipped")
    assert checks[("resumed run equals uninterrupted run", None)]["status"] == "pass"
    assert checks[("evaluate equals the reference nn.Module", None)]["status"] == "pass"
    assert all(c["status"] != "fail" for c in report["correctness"])

    rows = report["throughput"]["rows"]
    got = {(r["executor"], r["k"]) for r in rows if r["status"] == "ok" and r["model_images_per_sec"] > 0}
    assert got == {("standard", None)} | {(ex, k) for ex in ("vmap", "sequential") for k in (1, 2, 3)}
    assert all(r["peak_bytes_per_model"] is None for r in rows)  # a CPU: n/a, said so
    assert "n/a" in report["throughput"]["memory"]
    assert report["largest_stack"]["status"] == "skipped" and report["largest_stack"]["detail"]
    grid = report["grid"]
    assert grid["status"] == "ok" and grid["configurations"] == 4 and grid["seconds"] > 0

    md = (out / "device_check.md").read_text()
    for heading in ("## Environment", "## Correctness", "## Throughput", "## Largest stack", "## One-epoch grid"):
        assert heading in md
    assert "**fail**" not in md and md.count("**pass**") >= 6
