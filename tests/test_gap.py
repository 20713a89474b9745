"""The context gap (opcd.core.gap) against a hand computation, and its use during training (train.eval_every)."""

from __future__ import annotations

import json

import pytest
import torch

from opcd.config import DataConfig, RolloutConfig, load_config
from opcd.core import gap, models
from opcd.core.prompts import PromptRenderer
from opcd.core.rollout import HFSampler, eos_ids
from opcd.core.scoring import PrefixCache
from opcd.core.teachers import Teacher
from opcd.core.train import train
from opcd.errors import OpcdError
from tests.conftest import TOY_CONTEXT, tiny_overrides


def test_token_terms_match_the_definitions():
    torch.manual_seed(0)
    s, t = torch.randn(2, 3, 7), torch.randn(2, 3, 7)
    ids = torch.randint(0, 7, (2, 3))
    kl, extra = gap.token_terms(s, t, ids, temperature=0.7)
    for b in range(2):
        for r in range(3):
            p = torch.softmax(s[b, r] / 0.7, -1)
            q = torch.softmax(t[b, r] / 0.7, -1)
            assert kl[b, r] == pytest.approx(float((p * (p / q).log()).sum()), abs=1e-5)
            y = ids[b, r]
            assert extra[b, r] == pytest.approx(float(q[y].log() - p[y].log()), abs=1e-5)


def test_token_terms_compare_common_rows_only():
    s, t = torch.randn(1, 2, 5), torch.randn(1, 2, 8)  # a teacher with 3 padded rows
    kl, _ = gap.token_terms(s, t, torch.zeros(1, 2, dtype=torch.long))
    kl_same, _ = gap.token_terms(s, t[..., :5], torch.zeros(1, 2, dtype=torch.long))
    assert torch.allclose(kl, kl_same)


def _hand_logprobs(model, prompt: list[int], response: list[int]) -> torch.Tensor:
    """log-softmax over the vocabulary at each response position, from one plain forward of prompt + response."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + response])).logits[0]
    return torch.log_softmax(logits[len(prompt) - 1 : len(prompt) - 1 + len(response)].float(), -1)


@pytest.fixture(scope="module")
def setup(tiny_model, smol_tokenizer):
    model = models.load_model(str(tiny_model), "fp32").eval()
    renderer = PromptRenderer(smol_tokenizer, DataConfig(context=TOY_CONTEXT))
    prompts = ["What is 2 + 2?", "Name a colour.", "Say hello.", "Why is grass green?", "Count to three."]
    pairs = [renderer.render([{"role": "user", "content": p}], TOY_CONTEXT) for p in prompts]
    return model, pairs, smol_tokenizer


def test_gap_equals_a_hand_computation_on_a_tiny_model(setup, tiny_model):
    model, pairs, tok = setup
    rollout = RolloutConfig(temperature=1.0, max_new_tokens=5)
    eos = eos_ids(tok, model)
    sampler = HFSampler(model, rollout, eos, tok.pad_token_id, "fp32")
    own = [r for r, _ in sampler.generate([p.student_ids for p in pairs], seed=1)]
    theirs = [r for r, _ in sampler.generate([p.teacher_ids for p in pairs], seed=2)]
    teacher = Teacher(models.load_model(str(tiny_model), "fp32").eval(), cache=PrefixCache(min_tokens=4))
    result = gap.measure(
        gap.model_logits(model, tok.pad_token_id, "fp32"),
        gap.teacher_logits(teacher, tok.pad_token_id, "fp32"),
        pairs,
        own,
        theirs,
    )
    kl_sum = extra_sum = 0.0
    for pair, mine, their in zip(pairs, own, theirs, strict=True):
        s, t = _hand_logprobs(model, pair.student_ids, mine), _hand_logprobs(model, pair.teacher_ids, mine)
        kl_sum += float((s.exp() * (s - t)).sum())
        s, t = _hand_logprobs(model, pair.student_ids, their), _hand_logprobs(model, pair.teacher_ids, their)
        extra_sum += float(sum(t[i, y] - s[i, y] for i, y in enumerate(their)))
    assert result.own_tokens == sum(map(len, own)) and result.teacher_tokens == sum(map(len, theirs))
    assert result.reverse_kl == pytest.approx(kl_sum / result.own_tokens, rel=1e-4, abs=1e-5)
    assert result.extra_nll == pytest.approx(extra_sum / result.teacher_tokens, rel=1e-4, abs=1e-5)
    assert result.reverse_kl > 0.01  # the context moves this model: the test would notice a gap stuck at 0


def test_no_context_means_no_gap(setup):
    model, pairs, tok = setup
    same = [type(p)(p.student_ids, p.student_ids, 0) for p in pairs]  # the teacher sees what the model sees
    answers = [[tok.eos_token_id]] * len(same)
    fn = gap.model_logits(model, tok.pad_token_id, "fp32")
    result = gap.measure(fn, fn, same, answers, answers)
    assert abs(result.reverse_kl) < 1e-6 and abs(result.extra_nll) < 1e-6


def test_probe_keeps_a_fixed_teachers_samples(setup, tiny_model):
    model, pairs, tok = setup
    teacher = Teacher(models.load_model(str(tiny_model), "fp32").eval())
    probe = gap.Probe(pairs, RolloutConfig(max_new_tokens=4), seed=3)
    first = probe(model, teacher, eos_ids(tok, model), tok.pad_token_id, "fp32")
    kept = probe.teacher_samples
    again = probe(model, teacher, eos_ids(tok, model), tok.pad_token_id, "fp32")
    assert probe.teacher_samples is kept and again == first  # same samples, same seeds: the same gap
    assert gap.closed(first.total, first.total / 4) == pytest.approx(0.75) and gap.closed(0.0, 1.0) is None


def test_training_logs_the_gap_and_sample_answers(tiny_model, prompts_file, tmp_path):
    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text("".join(json.dumps({"prompt": f"Tell me about topic {i}."}) + "\n" for i in range(3)))
    run = tmp_path / "run"
    overrides = tiny_overrides(
        tiny_model, prompts_file, run, **{"train.steps": 3, "train.eval_every": 2, "train.log_samples_every": 3}
    )
    cfg = load_config(None, [*overrides, f"train.eval_prompts={held_out}"])
    train(cfg, progress=False)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert ["gap/reverse_kl" in r for r in rows] == [False, True, False]
    assert rows[1]["gap/reverse_kl"] > 0 and "gap/extra_nll" in rows[1]
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [3] * 4
    assert set(samples[0]) == {"step", "prompt", "student", "teacher"}
    assert samples[0]["prompt"] in (prompts_file.read_text())


def test_eval_prompts_must_be_given_and_disjoint(tiny_model, prompts_file, tmp_path):
    overrides = tiny_overrides(tiny_model, prompts_file, tmp_path / "run", **{"train.eval_every": 1})
    with pytest.raises(OpcdError, match="train.eval_prompts"):
        train(load_config(None, overrides), progress=False)
    with pytest.raises(OpcdError, match="gap evaluation prompt"):
        train(load_config(None, [*overrides, f"train.eval_prompts={prompts_file}"]), progress=False)
