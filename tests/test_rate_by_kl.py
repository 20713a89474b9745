"""`train.full_rate_kl`: below it a step's rate shrinks in proportion to the step's KL to the teacher."""

from __future__ import annotations

import math

import pytest

from opcd.config import TrainConfig, load_config, validate
from opcd.core.metrics import read_metrics
from opcd.core.train import lr_at, rate_by_kl, train
from opcd.errors import OpcdError
from opcd.recipes.system_prompt import PRESET

from .conftest import TOY_CONTEXT, make_tiny_model, tiny_overrides


def test_the_share_of_the_rate_is_the_kl_over_the_floor_below_it_and_all_of_it_above():
    t = TrainConfig(full_rate_kl=0.02)
    assert rate_by_kl(t, 0.001) == pytest.approx(0.05)
    assert rate_by_kl(t, 0.02) == 1.0 and rate_by_kl(t, 0.5) == 1.0
    assert rate_by_kl(t, -1e-9) == 0.0  # a rounding below 0 takes no step, not a negative one
    assert rate_by_kl(TrainConfig(), 1e-6) == 1.0  # off: the schedule's rate at any KL
    assert rate_by_kl(t, math.inf) == 1.0  # no KL measured


@pytest.fixture(scope="module")
def quiet_model(tmp_path_factory, smol_tokenizer):
    """A tiny model whose weights are small enough that a short context ("Hi.") hardly changes its answers: the
    student starts 0.0006 nats/token from the teacher, a null test in miniature."""
    return make_tiny_model(tmp_path_factory.mktemp("quiet") / "model", smol_tokenizer, init_std=0.05)


def _kl_curve(model, prompts, run_dir, **extra) -> list[dict]:
    overrides = {
        "loss.min_kl": 0,
        "loss.estimator": "full",
        "data.context": "Hi.",
        "rollout.max_new_tokens": 8,
        "train.steps": 6,
        "train.prompts_per_step": 4,
        "train.micro_batch_size": 4,
        "train.lr": 1e-2,
        **extra,
    }
    cfg = load_config(None, tiny_overrides(model, prompts, run_dir, **overrides))
    return read_metrics(train(cfg, progress=False) / "metrics.jsonl")


def test_a_context_that_changes_almost_nothing_stays_where_it_started(tmp_path, quiet_model, prompts_file):
    """The null test on the tiny model: AdamW's normalized step moves the student away from a teacher it already
    matches (the KL grows tens of times in a few steps); with the rate in proportion to the KL it does not grow."""
    plain = [r["kl/reverse_full"] for r in _kl_curve(quiet_model, prompts_file, tmp_path / "plain")]
    rows = _kl_curve(quiet_model, prompts_file, tmp_path / "by_kl", **{"train.full_rate_kl": 0.05})
    kept = [r["kl/reverse_full"] for r in rows]
    assert kept[0] == pytest.approx(plain[0]) and plain[0] < 2e-3  # the same start, close to the teacher
    assert min(plain[1:]) > 10 * plain[0], plain  # the drift this guards against
    assert max(kept) <= 1.5 * kept[0], kept
    cfg = TrainConfig(lr=1e-2, full_rate_kl=0.05)
    assert [r["optim/lr"] for r in rows] == pytest.approx(
        [lr_at(cfg, r["step"]) * r["kl/reverse_full"] / 0.05 for r in rows]
    )
    assert [r["optim/rate_by_kl"] for r in rows] == pytest.approx([r["kl/reverse_full"] / 0.05 for r in rows])


def test_a_run_whose_kl_stays_above_the_floor_is_the_run_without_it(tmp_path, tiny_model, prompts_file):
    """The toy context starts 0.26 nats/token away and stays above 0.05: every step takes the schedule's rate, so
    the run is the one without the option, step for step."""
    settings = {"data.context": TOY_CONTEXT}
    plain = _kl_curve(tiny_model, prompts_file, tmp_path / "plain", **settings)
    floored = _kl_curve(tiny_model, prompts_file, tmp_path / "floored", **settings, **{"train.full_rate_kl": 0.05})
    assert min(r["kl/reverse_full"] for r in plain) > 0.05
    assert [r["kl/reverse_full"] for r in floored] == [r["kl/reverse_full"] for r in plain]
    assert [r["optim/lr"] for r in floored] == [r["optim/lr"] for r in plain]


def test_a_negative_floor_is_refused(tmp_path, tiny_model, prompts_file):
    overrides = tiny_overrides(tiny_model, prompts_file, tmp_path / "run", **{"train.full_rate_kl": -1})
    with pytest.raises(OpcdError, match="train.full_rate_kl"):
        validate(load_config(None, overrides))


def test_sft_which_measures_no_kl_trains_at_the_schedules_rate_under_the_preset(tmp_path, tiny_model, prompts_file):
    """The preset's floor would read SFT's unmeasured KL as 0 and stop it; SFT takes the schedule's rate instead."""
    overrides = [*PRESET, *tiny_overrides(tiny_model, prompts_file, tmp_path / "run"), "loss.mode=sft"]
    cfg = load_config(None, overrides)
    assert cfg.train.full_rate_kl == 0.01
    rows = read_metrics(train(cfg, progress=False) / "metrics.jsonl")
    assert [r["optim/lr"] for r in rows] == pytest.approx([lr_at(cfg.train, r["step"]) for r in rows])
    assert all(r["optim/lr"] > 0 and "optim/rate_by_kl" not in r for r in rows)
