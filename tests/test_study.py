"""The whole study end to end on synthetic data with a tiny profile: report, caching, --force."""

from __future__ import annotations

import re

STAGES = ["sanity", "overfit", "lr_finder", "grid_search", "final", "evaluate"]
TINY_STUDY = {
    "train": {"epochs": 2},
    "hparams": {"lr": [0.003, 0.01], "weight_decay": [0.0], "blocks": [[1, 1, 1]], "bottleneck_mid": [4, 8]},
    "lr_finder": {"seeds": 2, "max_steps": 8},
    "overfit": {"num_train": 20, "blocks": [1, 1, 1], "bottleneck_mid": 8, "epochs": 30, "lr": 0.01},
    "study": {"profile": "tiny", "description": "synthetic smoke test"},
}


def test_study_end_to_end_then_cached(run_cli, tiny_config, tmp_path, monkeypatch):
    cfg = tiny_config({**TINY_STUDY, "paths": {"runs_dir": str(tmp_path / "runs"),
                                                "artifacts_dir": str(tmp_path / "artifacts"),
                                                "report_dir": str(tmp_path / "report")}})
    code, out, err = run_cli("study", "--config", str(cfg))
    assert code == 0, err
    report = (tmp_path / "report" / "REPORT.md").read_text()
    for heading in ("Data", "Model", "Baselines", "Overfitting", "LR finder", "Grid search", "Final training",
                    "Test evaluation", "Against the reference report", "Reproducibility"):
        assert heading in report
    for stage in STAGES:
        assert f"| {stage} |" in report
    assert "SYNTHETIC DATA" in report and "Reduced run" in report
    assert not re.search(r"\{[a-z_]+\}|None|nan|TODO", report)
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert len(images) >= 12
    for rel in images:
        assert (tmp_path / "report" / rel).resolve().is_file(), rel

    # a second run skips every stage; --force redoes one and what depends on it
    code, out, _ = run_cli("study", "--config", str(cfg))
    assert code == 0 and out.count("up to date") == 6
    code, out, _ = run_cli("study", "--config", str(cfg), "--force", "grid_search")
    assert code == 0 and out.count("up to date") == 3
    assert "== grid_search: running" in out and "== final: running" in out and "== evaluate: running" in out

    # a changed config part re-runs only the stages that depend on it
    code, out, _ = run_cli("study", "--config", str(cfg), "--set", "lr_finder.smoothing=0.9")
    assert code == 0 and "== lr_finder: running" in out and out.count("up to date") == 5


def test_study_without_data_is_a_clear_error(run_cli, tmp_path):
    code, _, err = run_cli("study", "--config", "configs/quick.yaml", "--data-root", str(tmp_path / "none"),
                           "--set", f"paths.runs_dir={tmp_path}/r")
    assert code == 2 and "--data-root" in err
