"""The gradient's signal share (opcd/core/signal.py) and `train.lr_by_signal`, which scales each step's rate by it."""

from __future__ import annotations

import pytest
import torch

from opcd.config import load_config, validate
from opcd.core.metrics import read_metrics
from opcd.core.signal import GradientParts, signal_share
from opcd.core.train import lr_at, train
from opcd.errors import OpcdError

from .conftest import tiny_overrides


def _share(parts: list[torch.Tensor]) -> float:
    total = torch.stack(parts).sum(0)
    return signal_share(sum(float(p.pow(2).sum()) for p in parts), len(parts), float(total.pow(2).sum()))


def test_the_share_is_one_when_the_parts_agree_and_near_zero_when_they_are_unrelated():
    torch.manual_seed(0)
    mean = torch.randn(100_000)
    assert _share([mean, mean, mean, mean]) == pytest.approx(1.0)
    noise = [torch.randn(100_000) for _ in range(4)]
    assert _share(noise) < 0.02  # independent parts: what they share is chance
    half = [mean + n for n in noise]  # each part as much noise as signal: the sum of 4 is 4/5 signal
    assert _share(half) == pytest.approx(0.8, abs=0.03)
    assert _share([mean]) == 1.0  # one part: nothing to compare, the rate is left alone
    assert signal_share(0.0, 2, 0.0) == 1.0


def test_gradient_parts_measure_each_micro_batch_share_of_the_accumulated_gradient():
    weight, frozen = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2), requires_grad=False)
    parts = GradientParts([weight, frozen])
    for x in (torch.tensor([1.0, 0.0, 0.0]), torch.tensor([1.0, 2.0, 0.0])):
        parts.before()
        (weight * x).sum().backward()
        parts.after()
    # each part's own square (1, then 1 + 4), not the accumulated gradient's (1, then 4 + 4)
    assert parts.count == 2 and parts.squares == pytest.approx(1.0 + 5.0)
    assert weight.grad.tolist() == [2.0, 2.0, 0.0]  # the accumulated gradient itself is untouched


def test_the_rate_by_signal_scales_each_step_and_still_learns_the_toy_context(tmp_path, tiny_model, prompts_file):
    """Each step's rate is the schedule's times its gradient's signal share (logged as optim/signal). On the tiny
    model the toy context's micro-batches agree at step 1 (share 0.8) and less as it is learned; the KL still falls.
    (A tiny random model shows no null test of noise: its "neutral" context shifts every answer alike, so its
    micro-batches agree. The 0.5B's null test is in benchmarks/null_test.py.)"""
    overrides = {
        "loss.min_kl": 0,
        "loss.estimator": "full",
        "train.steps": 10,
        "train.prompts_per_step": 12,
        "train.micro_batch_size": 6,
        "train.lr": 3e-3,
        "train.lr_by_signal": True,
    }
    cfg = load_config(None, tiny_overrides(tiny_model, prompts_file, tmp_path / "run", **overrides))
    rows = read_metrics(train(cfg, progress=False) / "metrics.jsonl")
    share = [r["optim/signal"] for r in rows]
    assert all(0 <= s <= 1 for s in share) and share[0] > 0.5 and min(share) < share[0], share
    assert [r["optim/lr"] for r in rows] == pytest.approx(
        [lr_at(cfg.train, r["step"]) * s for r, s in zip(rows, share, strict=True)]
    )
    kl = [r["kl/reverse_full"] for r in rows]
    assert min(kl[-3:]) < 0.7 * kl[0], kl


def test_the_share_is_measured_before_the_norm_clip(tmp_path, tiny_model, prompts_file):
    """The parts are the unclipped micro-batch gradients, so the share must compare them with the unclipped sum: a
    clip that shrinks the gradient 1000-fold leaves step 1's share as it was."""
    overrides = {"train.steps": 1, "train.prompts_per_step": 4, "train.micro_batch_size": 2, "train.lr_by_signal": True}
    shares = []
    for clip in (0, 1e-3):
        cfg = load_config(None, tiny_overrides(tiny_model, prompts_file, tmp_path / f"clip{clip}", **overrides,
                                               **{"train.max_grad_norm": clip}))  # fmt: skip
        row = read_metrics(train(cfg, progress=False) / "metrics.jsonl")[0]
        assert row["optim/grad_norm"] > 1e-2  # so a clip at 1e-3 does shrink it
        shares.append(row["optim/signal"])
    assert 0 < shares[0] < 1 and shares[1] == pytest.approx(shares[0], rel=1e-6)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"train.prompts_per_step": 4, "train.micro_batch_size": 4}, "2 or more of the same size"),
        ({"train.prompts_per_step": 8, "train.micro_batch_size": 3}, "2 or more of the same size"),
        ({"rollout.samples_per_prompt": 2, "train.micro_batch_size": 1}, "each prompt's 2 samples in one"),
        ({"loss.teacher_share": 0.5, "loss.estimator": "full"}, "loss.teacher_share puts"),
    ],
)
def test_what_the_rate_by_signal_cannot_compare_is_refused(tmp_path, tiny_model, prompts_file, settings, message):
    overrides = tiny_overrides(tiny_model, prompts_file, tmp_path / "run", **{"train.lr_by_signal": True, **settings})
    with pytest.raises(OpcdError, match=message):
        validate(load_config(None, overrides))
