"""The whole study end to end on synthetic data with a tiny profile: report, caching, --force, damaged outputs,
what it must not overwrite, output folders checked first."""

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
    # a run of the user's own in the same folders: the study must leave its checkpoint alone
    code, _, err = run_cli("train", "--config", str(cfg), "--run-name", "mine", "--set", "train.epochs=1")
    assert code == 0, err
    mine = (tmp_path / "artifacts" / "best.ckpt").read_bytes()
    code, out, err = run_cli("study", "--config", str(cfg))
    assert code == 0, err
    assert (tmp_path / "artifacts" / "best.ckpt").read_bytes() == mine
    assert (tmp_path / "artifacts" / "study" / "best.ckpt").is_file()
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

    def study(*argv: str) -> tuple[str, set[str]]:
        """Run the study again; its output and the stages it ran."""
        code, out, err = run_cli("study", "--config", str(cfg), *argv)
        assert code == 0, err
        ran = {s for s in STAGES if f"== {s}: running" in out}
        assert ran | {s for s in STAGES if f"== {s}: up to date" in out} == set(STAGES)
        return out, ran

    # a second run skips every stage, and so does a change of how it runs or where it writes
    assert study()[1] == set()
    assert study("--set", "train.compile=true", "--set", "grid.engine=ray", "--set", "paths.tensorboard=false",
                 "--set", f"paths.report_dir={tmp_path}/report2")[1] == set()
    assert (tmp_path / "report2" / "REPORT.md").is_file()
    # the final run trains the grid's winner: the configured lr is not what it computes from
    assert study("--set", "train.optimizer.lr=0.2")[1] == set()
    # --force redoes a stage, and those that read an output it changed
    assert study("--force", "final")[1] == {"final", "evaluate"}
    # a damaged cached output (the stage's marker, the stage's own file) runs its stage again instead of failing
    (tmp_path / "runs" / "study" / "sanity.json").write_text("{not json")
    assert study()[1] == {"sanity"}
    (tmp_path / "runs" / "sanity" / "sanity.json").write_text('{"truncated": ')
    assert study()[1] == {"sanity"}
    # a changed config part re-runs only the stages that read it
    assert study("--set", "lr_finder.smoothing=0.9")[1] == {"lr_finder"}
    # nor is the configured architecture: it changes the checks of the configured model, not the grid or final run
    assert study("--set", "model.blocks=[2,1,1]")[1] == {"sanity", "lr_finder"}
    # the grid directly: a change of keys it does not read keeps every finished stack
    code, out, err = run_cli("grid_search", "--config", str(cfg), "--set", "model.blocks=[2,1,1]",
                             "--set", "train.epochs=3")
    assert code == 0 and "done earlier, kept" in out and "steps 0 ->" not in out, err
    # the grid's results deleted, then the final run forced: the grid runs again (from its stacks' records)
    (tmp_path / "runs" / "grid_search" / "results.json").unlink()
    out, ran = study("--force", "final")
    assert {"grid_search", "final", "evaluate"} <= ran and "overfit" not in ran and "done earlier, kept" in out


def test_unwritable_report_folder_stops_the_study_before_its_first_stage(run_cli, tiny_config, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, out, err = run_cli("study", "--config", str(tiny_config(TINY_STUDY)), "--set",
                             f"paths.report_dir={blocker}/report")
    assert code == 2 and str(blocker) in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "== sanity" not in out and not (tmp_path / "runs" / "sanity").exists()


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
    test = json.loads((tmp_path / "artifacts" / "study" / "best.eval_test.json").read_text())
    assert test["ensemble_size"] == 2 and len(test["members"]) == 2
    final = [json.loads(line) for line in
             (tmp_path / "runs" / "study" / "final" / "metrics.jsonl").read_text().splitlines()]
    assert len(final) == 2 and len(final[-1]["members"]) == 2
    for seed in (42, 43):
        assert list((tmp_path / "runs" / "study" / "final" / "tb" / f"seed{seed}").glob("events.out.tfevents.*"))
    rows = json.loads((tmp_path / "runs" / "grid_search" / "results.json").read_text())
    assert sorted(r["label_smoothing"] for r in rows) == [0.0, 0.0, 0.1, 0.1]
