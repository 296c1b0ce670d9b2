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
    assert "SYNTHETIC DATA" in report and "differs from the full study" in report and "standard errors" in report
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


def test_study_with_the_recipe_and_a_seed_ensemble(run_cli, tiny_config, tmp_path):
    """The recipe's options through every stage, the grid ranking on a subset with label smoothing as an axis, and
    the final run as a stacked seed ensemble that evaluate and the report read as one."""
    import json

    cfg = tiny_config({
        **TINY_STUDY,
        "augment": {"off_last_epochs": 1},
        "train": {"epochs": 2, "label_smoothing": 0.1, "scheduler": {"name": "onecycle", "cycle_momentum": True},
                  "optimizer": {"name": "sgd", "lr": 0.05, "decay_norm_and_bias": False}},
        "hparams": {"lr": [0.02, 0.05], "weight_decay": [5e-4], "label_smoothing": [0.0, 0.1], "blocks": [[1, 1, 1]],
                    "bottleneck_mid": [4]},
        "grid": {"epochs": 1, "max_train": 200, "schedule": "halving", "halving": {"min_epochs": 0.5, "eta": 2}},
        "study": {"profile": "tiny-recipe", "description": "synthetic smoke test of the recipe", "final_seeds": 2},
        "paths": {"runs_dir": str(tmp_path / "runs"), "artifacts_dir": str(tmp_path / "artifacts"),
                  "report_dir": str(tmp_path / "report")}})
    code, out, err = run_cli("study", "--config", str(cfg))
    assert code == 0, err
    assert "train 200," in out  # the grid ranked on its subset; the final run trained on all 320
    report = (tmp_path / "report" / "REPORT.md").read_text()
    assert "A seed ensemble of 2 models" in report and "| member |" in report
    assert "`grid.max_train=200`" in report and "`study.final_seeds=2`" in report
    assert not re.search(r"\{[a-z_]+\}|None|nan|TODO", report)
    test = json.loads((tmp_path / "artifacts" / "eval_test.json").read_text())
    assert test["ensemble_size"] == 2 and len(test["members"]) == 2
    final = [json.loads(line) for line in (tmp_path / "runs" / "final" / "metrics.jsonl").read_text().splitlines()]
    assert len(final) == 2 and len(final[-1]["members"]) == 2
    for seed in (42, 43):
        assert list((tmp_path / "runs" / "final" / "tb" / f"seed{seed}").glob("events.out.tfevents.*"))
    rows = json.loads((tmp_path / "runs" / "grid_search" / "results.json").read_text())
    assert sorted(r["label_smoothing"] for r in rows) == [0.0, 0.0, 0.1, 0.1]
