"""The demo pipeline (evaluate, train, evaluate, report) on a tiny model: every artifact is written."""

from __future__ import annotations

import json

from opcd.demo import run_demo


def test_demo_writes_report_plot_and_table(tiny_model, tmp_path, capsys):
    run = run_demo(
        str(tmp_path / "demo"),
        [
            f"model.student={tiny_model}",
            "model.dtype=fp32",
            "train.steps=2",
            "train.prompts_per_step=2",
            "rollout.max_new_tokens=4",
            "train.tensorboard=false",
        ],
    )
    table = json.loads((run / "demo.json").read_text())
    assert set(table) == {
        "Base, without the prompt",
        "In-context (teacher): base with the prompt",
        "OPCD student, without the prompt",
    }
    assert all(0.0 <= v <= 1.0 for v in table.values())
    report = (run / "report.md").read_text()
    assert "| OPCD student, without the prompt |" in report
    assert (run / "training.png").stat().st_size > 1000
    assert "OPCD student, without the prompt" in capsys.readouterr().out
