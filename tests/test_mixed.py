"""Mixed rollouts (`loss.teacher_share`): the teacher answers a share of an OPCD step, annealed to 0; its rows are
trained with the forward KL, the student's own with the reverse KL."""

from __future__ import annotations

from contextlib import ExitStack
from types import SimpleNamespace

import pytest
import torch

from opcd.config import LossConfig, load_config
from opcd.core import losses, objectives
from opcd.core.metrics import read_metrics
from opcd.core.rollout import HFSampler, step_seed
from opcd.core.setup import set_up
from opcd.core.train import sample, teacher_count, train
from opcd.errors import OpcdError

from .conftest import tiny_overrides


def test_the_share_falls_linearly_to_zero():
    cfg = LossConfig(teacher_share=0.5, teacher_share_steps=4)
    assert [objectives.teacher_share(cfg, s, 20) for s in range(1, 7)] == [0.5, 0.375, 0.25, 0.125, 0.0, 0.0]
    whole_run = LossConfig(teacher_share=1.0)
    assert objectives.teacher_share(whole_run, 1, 10) == 1.0
    assert objectives.teacher_share(whole_run, 10, 10) == pytest.approx(0.1)
    assert objectives.teacher_share(LossConfig(), 1, 10) == 0.0  # pure OPCD
    assert objectives.teacher_share(LossConfig(mode="offpolicy", teacher_share=0.5), 1, 10) == 0.0


def test_the_teachers_rows_are_counted_over_the_whole_step_whatever_the_number_of_processes():
    cfg = SimpleNamespace(loss=LossConfig(teacher_share=0.2), train=SimpleNamespace(steps=10))
    items = list(range(8))  # 0.2 x 8 = 1.6: the teacher answers the step's first 2 items
    one = teacher_count(SimpleNamespace(cfg=cfg, mine=slice(0, 8)), 1, len(items))
    four = [teacher_count(SimpleNamespace(cfg=cfg, mine=slice(r * 2, r * 2 + 2)), 1, len(items)) for r in range(4)]
    assert one == 2 and four == [2, 0, 0, 0]
    half = SimpleNamespace(loss=LossConfig(teacher_share=0.5), train=SimpleNamespace(steps=10))
    assert teacher_count(SimpleNamespace(cfg=half, mine=slice(0, 5)), 1, 5) == 3  # 2.5 rounds up


def test_teacher_rows_get_the_forward_kl_and_student_rows_the_reverse_kl():
    torch.manual_seed(0)
    s, t = torch.randn(3, 4, 50), torch.randn(3, 4, 50)
    y = torch.randint(0, 50, (3, 4))
    cfg = LossConfig(estimator="full", top_k=8)
    mixed = objectives.mixed_loss(cfg, 1.0, torch.tensor([True, False, True]))(s, t, y, slice(0, 4))
    forward = losses.token_forward_kl(s, t, top_k=8, renormalize=False, temperature=1.0)
    reverse = losses.token_reverse_kl(s, t, top_k=None, temperature=1.0)
    assert torch.allclose(mixed[0], forward[0]) and torch.allclose(mixed[2], forward[2])
    assert torch.allclose(mixed[1], reverse[1])
    assert not torch.allclose(forward[1], reverse[1])  # the two losses differ, so the rows were really chosen


def test_the_teacher_answers_its_share_with_the_context_and_the_student_the_rest(tiny_model, prompts_file, tmp_path):
    cfg = load_config(None, tiny_overrides(tiny_model, prompts_file, tmp_path / "run", **{"loss.teacher_share": 0.5}))
    with ExitStack() as stack:
        run = set_up(cfg, None, False, stack)
        indices, seed = [3, 7, 1, 9], step_seed(0, 1)
        assert teacher_count(run, 1, len(indices)) == 2
        rollouts, counts = sample(run, indices, seed, 0, teacher_count(run, 1, len(indices)))
        assert counts == {"teacher_share": 2}
        assert [r.by_teacher for r in rollouts] == [True, True, False, False]
        assert [r.example for r in rollouts] == indices
        pairs = [run.source.pairs[i] for i in indices]
        pad = run.tokenizer.pad_token_id
        with run.teacher.active() as teacher:
            theirs = HFSampler(teacher, cfg.rollout, run.eos, pad, "fp32").generate(
                [p.teacher_ids for p in pairs[:2]], step_seed(seed, -1)
            )
        mine = HFSampler(run.student, cfg.rollout, run.eos, pad, "fp32").generate(
            [p.student_ids for p in pairs[2:]], seed
        )
        assert [r.response for r in rollouts] == [r for r, _ in theirs + mine]
        assert teacher_count(run, 2, len(indices)) == 1  # the share is 0.25 at step 2 of 2: 1 row
        assert [r.by_teacher for r in sample(run, indices, seed, 0, 1)[0]] == [True, False, False, False]


def test_a_mixed_run_trains_and_logs_the_share(tiny_model, prompts_file, tmp_path):
    overrides = {"loss.teacher_share": 0.5, "loss.teacher_share_steps": 2, "train.steps": 3, "loss.estimator": "full"}
    cfg = load_config(None, tiny_overrides(tiny_model, prompts_file, tmp_path / "run", **overrides))
    rows = read_metrics(train(cfg, progress=False) / "metrics.jsonl")
    assert [r["rollout/teacher_share"] for r in rows] == [0.5, 0.25, 0.0]  # 4 prompts: 2, 1, 0 teacher rows
    assert all(torch.isfinite(torch.tensor(r["loss/value"])) and r["kl/reverse_full"] > 0 for r in rows)
    assert rows[0]["loss/value"] != pytest.approx(rows[0]["kl/reverse_full"])  # teacher rows: forward KL
    assert rows[2]["loss/value"] == pytest.approx(rows[2]["kl/reverse_full"], rel=1e-4)  # pure OPCD again


@pytest.mark.parametrize(
    "extra",
    [{"loss.teacher_share": 1.5}, {"loss.teacher_share": 0.5, "loss.mode": "offpolicy"},
     {"loss.teacher_share": 0.5, "loss.estimator": "sampled"}],
)  # fmt: skip
def test_a_share_that_cannot_mix_is_refused(tiny_model, prompts_file, tmp_path, extra):
    cfg = load_config(None, tiny_overrides(tiny_model, prompts_file, tmp_path / "run", **extra))
    with pytest.raises(OpcdError, match="loss.teacher_share"):
        train(cfg, progress=False)


def test_a_schedule_that_follows_the_run_length_refuses_a_longer_resume(tiny_model, prompts_file, tmp_path):
    for extra, refused in (({}, False), ({"train.lr_schedule": "cosine"}, True), ({"loss.teacher_share": 0.5}, True)):
        run_dir = tmp_path / str(len(list(tmp_path.iterdir())))
        train(load_config(None, tiny_overrides(tiny_model, prompts_file, run_dir, **extra)), progress=False)
        longer = load_config(None, tiny_overrides(tiny_model, prompts_file, run_dir, **extra, **{"train.steps": 3}))
        if refused:
            with pytest.raises(OpcdError, match="train.steps"):
                train(longer, resume=True, progress=False)
        else:
            train(longer, resume=True, progress=False)
