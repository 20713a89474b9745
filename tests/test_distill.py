"""`opcd distill-prompt`, `opcd demo` and `opcd eval` on a tiny model: artifacts, resume, selection, clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from opcd import versions
from opcd.cli import main
from opcd.config import RolloutConfig, load_config
from opcd.core import models
from opcd.errors import OpcdError
from opcd.recipes.pipeline import base_cache_dir
from opcd.recipes.system_prompt import EvalPlan, distill_prompt
from opcd.versions import SOFTWARE
from tests.conftest import TOY_CONTEXT

TINY_OOD = {
    "instructions": (3, RolloutConfig(temperature=0.0, max_new_tokens=6)),
    "gsm8k": (2, RolloutConfig(temperature=0.0, max_new_tokens=6)),
}


def _cfg(tiny_model, prompts, run_dir, *extra):
    return load_config(
        None,
        [
            f"model.student={tiny_model}",
            "model.dtype=fp32",
            f"data.prompts={prompts}",
            f"data.context={TOY_CONTEXT}",
            "train.steps=2",
            "train.prompts_per_step=2",
            "rollout.max_new_tokens=4",
            "train.report_to=none",
            f"train.run_dir={run_dir}",
            *extra,
        ],
    )


def _plan(**kw):
    base = dict(scorer=("starts_with:Arr!",), rollout=RolloutConfig(temperature=0.0, max_new_tokens=5), ood=TINY_OOD)
    return EvalPlan(**{**base, **kw})


def test_distill_prompt_writes_results_report_plot(tiny_model, prompts_file, tmp_path):
    results = distill_prompt(_cfg(tiny_model, prompts_file, tmp_path / "run"), _plan(), progress=False)
    run = tmp_path / "run"
    assert list(results["rates"]) == [
        "Base, without the prompt",
        "In-context: base with the prompt",
        "OPCD student, without the prompt",
    ]
    assert results["test"]["n"] == 24 and results["checkpoint"]["step"] == 2
    assert set(results["ood"]) == {"instructions", "gsm8k"}
    assert results["ood"]["instructions"]["n"] == 3 and results["ood"]["gsm8k"]["n"] == 2
    instructions = results["ood"]["instructions"]  # starts_with:Arr! is a checker: all three retention views
    assert 0 <= instructions["in_context"] <= 1 and set(instructions["like_with_like"]) == {"in_context", "student"}
    split = instructions["conflict_split"]
    assert sum(split[part]["base"][1] for part in ("conflicting", "other")) == 3
    report = (run / "report.md").read_text()
    assert "| in-context |" in report and "Like with like" in report and "conflict with the behaviour" in report
    assert json.loads((run / "results.json").read_text())["rates"] == results["rates"]
    assert results["software"]["torch"] == torch.__version__  # what a rerun elsewhere needs to match
    assert set(results["software"]) == {"python", "opcd", *SOFTWARE} and all(results["software"].values())
    assert "| OPCD student, without the prompt |" in (run / "report.md").read_text()
    assert (run / "training.png").stat().st_size > 1000


def test_rerun_reuses_every_evaluation(tiny_model, prompts_file, tmp_path, monkeypatch):
    cfg = _cfg(tiny_model, prompts_file, tmp_path / "run")
    distill_prompt(cfg, _plan(), progress=False)
    saved = {p: p.stat().st_mtime_ns for p in (tmp_path / "run" / "eval").iterdir()}
    # base without, with, gap, each suite's ood and ood in context; student, each suite's ood, its gap
    assert len(saved) == 11
    again = distill_prompt(cfg, _plan(), progress=False)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "run" / "eval").iterdir()} == saved
    assert again["checkpoint"]["step"] == 2
    # after an upgrade the scores are measured again, not mixed with those the old versions made
    upgraded = {**versions.software(), "transformers": "9.9.9"}
    monkeypatch.setattr(versions, "_software", lambda: tuple(upgraded.items()))
    distill_prompt(cfg, _plan(), progress=False)
    now = {p: p.stat().st_mtime_ns for p in (tmp_path / "run" / "eval").iterdir()}
    assert len(now) == 22 and all(now[p] == t for p, t in saved.items())
    assert json.loads((tmp_path / "run" / "results.json").read_text())["software"]["transformers"] == "9.9.9"


def test_base_scores_are_shared_through_base_cache(tiny_model, prompts_file, tmp_path):
    shared = tmp_path / "base"
    # the second run asks one suite of the two (as the demo does): each suite's scores are cached on their own
    for method, ood in (("opcd", TINY_OOD), ("offpolicy", {"instructions": TINY_OOD["instructions"]})):
        cfg = _cfg(tiny_model, prompts_file, tmp_path / method, f"loss.mode={method}")
        results = distill_prompt(cfg, _plan(base_cache=str(shared), keep_weights=False, ood=ood), progress=False)
        assert not (tmp_path / method / "checkpoints").exists() and set(results["ood"]) == set(ood)
        assert len(list(shared.iterdir())) == 7  # without, with, gap, each suite's ood and ood in context


def test_checkpoint_is_selected_on_validation_never_on_test(tiny_model, prompts_file, tmp_path):
    validation = tmp_path / "val.jsonl"
    validation.write_text("".join(json.dumps({"prompt": f"Tell me about topic {i}."}) + "\n" for i in range(4)))
    cfg = _cfg(tiny_model, prompts_file, tmp_path / "run", "train.save_every=1")
    results = distill_prompt(cfg, _plan(validation_prompts=str(validation), ood={}), progress=False)
    chosen = results["checkpoint"]
    assert set(chosen["validation_rates"]) == {1, 2}
    best = max(chosen["validation_rates"].values())
    assert chosen["validation_rates"][chosen["step"]] == best
    assert "validation" in chosen["rule"]
    earliest = distill_prompt(
        _cfg(tiny_model, prompts_file, tmp_path / "early", "train.save_every=1"),
        _plan(validation_prompts=str(validation), select="earliest", ood={}),
        progress=False,
    )["checkpoint"]
    assert earliest["rule"].startswith("the earliest within one standard error of the best on validation")
    rates = {int(k): v for k, v in earliest["validation_rates"].items()}
    top = max(rates.values())
    assert earliest["step"] == min(s for s, r in rates.items() if r >= top - (top * (1 - top) / 4) ** 0.5 - 1e-12)


def test_the_earliest_rule_takes_the_first_checkpoint_within_one_standard_error_of_the_best(tmp_path):
    from opcd.recipes.pipeline import best_checkpoint
    from opcd.recipes.stats import rate_margin

    found = [(step, tmp_path / str(step)) for step in (10, 20, 30, 40)]
    rates = {10: 0.70, 20: 0.925, 30: 0.90, 40: 0.95}
    score = lambda step, path: rates[step]  # noqa: E731
    assert best_checkpoint(found, score)[0] == 40  # the best
    margin = lambda best: rate_margin(best, 40)  # noqa: E731  # 0.034 at 0.95 on 40 prompts
    step, path, seen = best_checkpoint(found, score, margin)
    assert step == 20 and path == tmp_path / "20" and seen == rates  # 0.925 is within it, 0.70 is not
    assert best_checkpoint(found, lambda step, path: 1.0, margin)[0] == 10  # all perfect: the first
    assert best_checkpoint(found, lambda step, path: 1.0)[0] == 40  # ties: the later
    assert rate_margin(1.0, 40) == 0.0 and rate_margin(0.5, 0) == 0.0


def test_the_earliest_rule_needs_a_validation_split(tiny_model, prompts_file, tmp_path):
    cfg = _cfg(tiny_model, prompts_file, tmp_path / "run")
    with pytest.raises(OpcdError, match="--select earliest .* give --validation-prompts"):
        distill_prompt(cfg, _plan(select="earliest"))
    with pytest.raises(OpcdError, match="select='first': choose 'best' or 'earliest'"):
        distill_prompt(cfg, _plan(select="first", validation_prompts="opcd:generic_val"))
    assert not (tmp_path / "run").exists()


def test_overlapping_test_or_validation_prompts_are_refused_before_any_work(tiny_model, prompts_file, tmp_path):
    cfg = _cfg(tiny_model, prompts_file, tmp_path / "run")
    with pytest.raises(OpcdError, match="evaluation prompt.* also appear in the training prompts"):
        distill_prompt(cfg, _plan(test_prompts=str(prompts_file)))
    with pytest.raises(OpcdError, match="validation prompt.* also appear in the training prompts"):
        distill_prompt(cfg, _plan(validation_prompts=str(prompts_file)))
    with pytest.raises(OpcdError, match="test prompt.* also appear in the validation prompts"):
        distill_prompt(cfg, _plan(validation_prompts="opcd:generic_eval"))
    assert not (tmp_path / "run").exists()


def test_a_context_that_changes_nothing_is_refused(tiny_model, prompts_file, tmp_path):
    cfg = _cfg(tiny_model, prompts_file, tmp_path / "run", "loss.min_kl=1000")
    with pytest.raises(OpcdError, match="nothing to distill"):
        distill_prompt(cfg, _plan(ood={}), progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_unknown_checker_and_empty_prompt_file_fail_with_one_line(tiny_model, tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    base = ["distill-prompt", "--system-prompt", "Be brief.", "--model", str(tiny_model), "--run-dir", str(tmp_path)]
    assert main([*base, "--check", "rhymes"]) == 2
    assert "unknown checker or grader 'rhymes'" in capsys.readouterr().err
    assert main([*base, "--check", "uppercase", "--prompts", str(empty)]) == 2
    assert f"prompts file '{empty}' has no examples" in capsys.readouterr().err


def test_demo_prints_the_table(tiny_model, tmp_path, capsys):
    code = main(
        [
            "demo",
            "--run-dir",
            str(tmp_path / "demo"),
            f"model.student={tiny_model}",
            "model.dtype=fp32",
            "train.steps=1",
            "train.prompts_per_step=2",
            "rollout.max_new_tokens=3",
            "train.report_to=none",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "OPCD student, without the prompt" in out and "OOD instructions" in out
    assert (tmp_path / "demo" / "report.md").is_file()


def test_eval_command_scores_both_sides_and_writes_responses(tiny_model, prompts_file, tmp_path, capsys):
    out = tmp_path / "eval.json"
    args = ["eval", str(tiny_model), "--prompts", str(prompts_file), "--context", TOY_CONTEXT, "--check", "uppercase"]
    code = main([*args, "--context-side", "both", "--no-ood", "--max-new-tokens", "4", "--out", str(out)])
    assert code == 0
    saved = json.loads(out.read_text())
    assert saved["n"] == 12 and len(saved["with context"]["responses"]) == 12
    assert set(saved["summary"]) == {"without context", "with context"}
    assert saved["software"]["opcd"] and saved["software"]["torch"] == torch.__version__
    assert main(["eval", str(tiny_model), "--check", "uppercase", "--context-side", "with"]) == 2
    assert "the context is empty" in capsys.readouterr().err
    assert main(["eval", str(tiny_model), "--check", "uppercase", "--gsm8k", "-1"]) == 2
    assert "--gsm8k -1" in capsys.readouterr().err


def test_config_values_are_not_overridden_by_option_defaults(tiny_model, prompts_file, tmp_path):
    from opcd.cli import parser

    config = tmp_path / "c.toml"
    run = tmp_path / "from-config"
    config.write_text(
        f'[model]\nstudent = "{tiny_model}"\ndtype = "fp32"\n[data]\nprompts = "{prompts_file}"\n'
        f'context = "{TOY_CONTEXT}"\n[loss]\nmode = "sft"\n[train]\nrun_dir = "{run}"\nsteps = 1\n'
        "prompts_per_step = 2\nreport_to = 'none'\n[rollout]\nmax_new_tokens = 3\n"
    )
    args = parser().parse_args(["distill-prompt", "--config", str(config), "--check", "uppercase", "--no-ood"])
    args.func(args)
    saved = (run / "config.toml").read_text()
    assert 'mode = "sft"' in saved and str(prompts_file) in saved and str(tiny_model) in saved


def test_packaged_base_models_share_one_score_cache_and_local_ones_do_not(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("OPCD_CACHE", str(tmp_path / "cache"))
    packaged = load_config(None, ["model.student=qwen2.5-coder-0.5b-instruct", f"train.run_dir={tmp_path}/a"])
    folder, extra = base_cache_dir(packaged, "")
    assert folder == tmp_path / "cache" / "scores"
    assert extra == {"weights": models.PACKAGED["qwen2.5-coder-0.5b-instruct"].sha256}
    local = load_config(None, [f"model.student={tiny_model}", f"train.run_dir={tmp_path}/b"])
    assert base_cache_dir(local, "") == (tmp_path / "b" / "eval", {})  # a local directory's weights may change
    assert base_cache_dir(local, str(tmp_path / "sweep")) == (tmp_path / "sweep", {})
