"""The training loop on tiny random models: it learns, it is split-invariant, it resumes exactly, every mode runs."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from opcd.config import TrainConfig, load_config
from opcd.core.checkpoint import list_checkpoints
from opcd.core.metrics import read_metrics
from opcd.core.train import batch_indices, lr_at, train
from opcd.errors import OpcdError

from .conftest import make_tiny_model, tiny_overrides


def _run(tiny_model, prompts_file, run_dir, resume=False, **extra):
    cfg = load_config(None, tiny_overrides(tiny_model, prompts_file, run_dir, **extra))
    return train(cfg, resume=resume, progress=False)


def _weights(run_dir, step=None):
    found = dict(list_checkpoints(run_dir))
    path = found[step if step is not None else max(found)]
    return load_file(path / "model" / "model.safetensors")


def test_smoke_loss_finite_params_change_kl_falls(tiny_model, prompts_file, tmp_path):
    # full-vocabulary KL: the random model keeps only ~8 % of its mass in its top-256, where the partial sum leaks
    overrides = {
        "train.steps": 10,
        "train.prompts_per_step": 12,
        "train.micro_batch_size": 6,
        "train.lr": 3e-3,
        "loss.estimator": "full",
    }
    run = _run(tiny_model, prompts_file, tmp_path / "run", **overrides)
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 11))
    assert all(torch.isfinite(torch.tensor(r["loss/value"])) for r in rows)
    kl = [r["kl/reverse_full"] for r in rows]
    assert kl[0] > 0
    assert sum(kl[-3:]) / 3 < 0.8 * sum(kl[:3]) / 3, kl
    before = load_file(tiny_model / "model.safetensors")
    after = _weights(run)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    cfg_text = (run / "config.toml").read_text()
    assert "[loss]" in cfg_text and 'mode = "opcd"' in cfg_text
    for key in ("time/generate", "time/teacher", "time/student", "time/optimizer", "optim/grad_norm"):
        assert key in rows[0]
    assert "memory/resident_gib" in rows[0] and "kl/topk_mass" not in rows[0]  # no top-k set in the full KL


def test_full_estimator_logs_the_same_kl_as_the_separate_diagnostic(tiny_model, prompts_file, tmp_path):
    """With the full estimator the logged KL is the loss itself; with top-k it is computed beside the loss. Step 1
    (same weights, same seeded samples) must log the same value both ways, and only top-k logs its mass."""
    first = {}
    for estimator in ("full", "topk"):
        run = _run(tiny_model, prompts_file, tmp_path / estimator, **{"train.steps": 1, "loss.estimator": estimator})
        first[estimator] = read_metrics(run / "metrics.jsonl")[0]
    assert first["full"]["kl/reverse_full"] == pytest.approx(first["topk"]["kl/reverse_full"], rel=1e-4)
    assert first["full"]["loss/value"] == pytest.approx(first["full"]["kl/reverse_full"], rel=1e-4)
    assert 0 < first["topk"]["kl/topk_mass"] <= 1 and "kl/topk_mass" not in first["full"]


@pytest.mark.parametrize("reduction", ["token", "sequence"])
def test_update_is_independent_of_micro_batch_size(tiny_model, prompts_file, tmp_path, reduction):
    """Same samples, same loss and same accumulated gradient (its norm is logged before clipping) for any split.
    (Parameters after one Adam step are no test: Adam's first update is lr·sign(g), which amplifies rounding noise.)"""
    rows = {}
    for size in (1, 3, 4):
        run = _run(
            tiny_model,
            prompts_file,
            tmp_path / f"m{size}",
            **{"train.steps": 2, "train.micro_batch_size": size, "loss.reduction": reduction},
        )
        rows[size] = read_metrics(run / "metrics.jsonl")
    for size in (3, 4):
        for a, b in zip(rows[1], rows[size], strict=True):
            assert a["rollout/response_tokens"] == b["rollout/response_tokens"]
            assert a["loss/value"] == pytest.approx(b["loss/value"], rel=1e-5)
            assert a["optim/grad_norm"] == pytest.approx(b["optim/grad_norm"], rel=1e-4)


def test_resume_reproduces_uninterrupted_run(tiny_model, prompts_file, tmp_path):
    full = _run(tiny_model, prompts_file, tmp_path / "full", **{"train.steps": 4, "train.save_every": 2})
    part = tmp_path / "part"
    _run(tiny_model, prompts_file, part, **{"train.steps": 2, "train.save_every": 2})  # "killed" after step 2
    _run(tiny_model, prompts_file, part, resume=True, **{"train.steps": 4, "train.save_every": 2})
    a, b = _weights(full, 4), _weights(part, 4)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # every checkpoint keeps its model; the two newest keep the optimizer state (the older one to fall back to)
    assert [s for s, _ in list_checkpoints(full)] == [2, 4]
    assert [s for s, _ in list_checkpoints(full, resumable=True)] == [2, 4]
    rows_a, rows_b = read_metrics(full / "metrics.jsonl"), read_metrics(part / "metrics.jsonl")
    assert [r["step"] for r in rows_b] == [1, 2, 3, 4]
    assert [r["loss/value"] for r in rows_a] == [r["loss/value"] for r in rows_b]


def test_resume_after_an_upgrade_says_which_versions_changed(tiny_model, prompts_file, tmp_path, capsys):
    import transformers

    from opcd.core.checkpoint import load_trainer_state

    run = _run(tiny_model, prompts_file, tmp_path / "run", **{"train.steps": 1, "train.save_every": 1})
    _run(tiny_model, prompts_file, run, resume=True, **{"train.steps": 2, "train.save_every": 1})
    assert "other library versions" not in capsys.readouterr().out
    newest = list_checkpoints(run, resumable=True)[-1][1]
    state = load_trainer_state(newest)
    assert state["software"]["transformers"] == transformers.__version__
    torch.save(state | {"software": {**state["software"], "transformers": "4.0.0"}}, newest / "trainer_state.pt")
    _run(tiny_model, prompts_file, run, resume=True, **{"train.steps": 3, "train.save_every": 1})
    out = capsys.readouterr().out
    assert (
        f"other library versions than step 2 was trained with (transformers 4.0.0 -> {transformers.__version__})" in out
    )
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2, 3]  # a warning, not a refusal


def test_resume_after_kill_mid_run(tiny_model, prompts_file, tmp_path):
    """A real kill: the process dies right after the step-2 checkpoint; resume then matches the full run."""
    import multiprocessing as mp

    overrides = tiny_overrides(
        tiny_model, prompts_file, tmp_path / "killed", **{"train.steps": 4, "train.save_every": 2}
    )
    proc = mp.get_context("spawn").Process(target=_train_and_die_after_step_2, args=(overrides,))
    proc.start()
    proc.join(120)
    assert proc.exitcode == 17
    assert [s for s, _ in list_checkpoints(tmp_path / "killed", resumable=True)] == [2]
    _run(tiny_model, prompts_file, tmp_path / "killed", resume=True, **{"train.steps": 4, "train.save_every": 2})
    full = _run(tiny_model, prompts_file, tmp_path / "full", **{"train.steps": 4, "train.save_every": 2})
    a, b = _weights(full, 4), _weights(tmp_path / "killed", 4)
    assert all(torch.equal(a[k], b[k]) for k in a)


def _train_and_die_after_step_2(overrides):
    import os

    from opcd.core import checkpoint

    real_save = checkpoint.save

    def save_then_die(*args, **kwargs):
        path = real_save(*args, **kwargs)
        if args[1] == 2:
            os._exit(17)  # no cleanup, like SIGKILL
        return path

    checkpoint.save = save_then_die
    train(load_config(None, overrides), progress=False)


def test_existing_run_needs_resume_and_same_config(tiny_model, prompts_file, tmp_path):
    run = _run(tiny_model, prompts_file, tmp_path / "run", **{"train.steps": 1})
    with pytest.raises(OpcdError, match="already holds checkpoints: pass --resume"):
        _run(tiny_model, prompts_file, run, **{"train.steps": 1})
    with pytest.raises(OpcdError, match=r"changed since the checkpoint: train.lr$"):
        _run(tiny_model, prompts_file, run, resume=True, **{"train.steps": 2, "train.lr": 0.5})


@pytest.mark.parametrize(
    "extra",
    [
        {"loss.mode": "offpolicy"},
        {"loss.mode": "sft"},
        {"loss.estimator": "full"},
        {"loss.estimator": "tail", "loss.top_k": 8},
        {"loss.estimator": "sampled"},
        {"loss.estimator": "sampled", "loss.discount": 1.0},
        {"loss.reduction": "sequence", "loss.renormalize": "true"},
        {"model.teacher": "live"},
        {"model.teacher": "ema"},
        {"model.lora_rank": 4, "model.lora_targets": "q_proj,v_proj"},
        {"model.lora_rank": 4, "loss.mode": "offpolicy"},  # distill-prompt's preset is LoRA: its other modes
        {"model.lora_rank": 4, "loss.teacher_share": 0.5},
        {"model.dtype": "bf16", "train.gradient_checkpointing": "true"},
        {"rollout.samples_per_prompt": 2, "rollout.top_k": 20, "rollout.top_p": 0.9, "train.warmup_steps": 2},
    ],
    ids=lambda e: ",".join(f"{k}={v}" for k, v in e.items()),
)
def test_every_variant_trains(tiny_model, prompts_file, tmp_path, extra):
    run = _run(tiny_model, prompts_file, tmp_path / "run", **extra)
    rows = read_metrics(run / "metrics.jsonl")
    assert len(rows) == 2 and all(r["optim/skipped"] == 0 for r in rows)
    assert all(torch.isfinite(torch.tensor(r["optim/grad_norm"])) and r["optim/grad_norm"] > 0 for r in rows)


def test_lora_checkpoint_is_an_adapter_and_teacher_is_base(tiny_model, prompts_file, tmp_path):
    run = _run(tiny_model, prompts_file, tmp_path / "run", **{"model.lora_rank": 4})
    model_dir = list_checkpoints(run)[-1][1] / "model"
    assert json.loads((model_dir / "adapter_config.json").read_text())["r"] == 4


def test_the_lora_adapter_starts_from_the_seed_alone(tiny_model):
    """The same seed gives the same adapter whatever the process drew before (a score cache that skips an
    evaluation changes that), and building it leaves the global RNG as it was."""
    from opcd.config import ModelConfig
    from opcd.core.setup import build_student

    cfg = ModelConfig(student=str(tiny_model), dtype="fp32", lora_rank=4)

    def adapter(seed: int, draws_before: int) -> dict:
        torch.manual_seed(123)
        torch.rand(draws_before)
        state = torch.get_rng_state()
        student = build_student(cfg, seed)
        assert torch.equal(torch.get_rng_state(), state)
        return {k: v.clone() for k, v in student.named_parameters() if "lora_A" in k}

    first, after_more_draws, other_seed = adapter(0, 1), adapter(0, 1000), adapter(1, 1)
    assert first and all(torch.equal(first[k], after_more_draws[k]) for k in first)
    assert not all(torch.equal(first[k], other_seed[k]) for k in first)


def test_cross_size_teacher(tiny_model, prompts_file, tmp_path, smol_tokenizer):
    bigger = make_tiny_model(tmp_path / "bigger", smol_tokenizer, hidden=64, layers=3, seed=1)
    run = _run(tiny_model, prompts_file, tmp_path / "run", **{"model.teacher": str(bigger)})
    assert len(read_metrics(run / "metrics.jsonl")) == 2


def test_the_frozen_teacher_is_a_separate_copy_in_the_compute_dtype(tiny_model, smol_tokenizer, monkeypatch):
    from opcd.config import ModelConfig
    from opcd.core.models import load_model
    from opcd.core.teachers import build_teacher

    student = load_model(str(tiny_model), "fp32")
    original = student.get_output_embeddings().weight.detach().clone()

    def whole_copy(*_):
        raise AssertionError("a weight was copied whole, in the student's precision")

    monkeypatch.setattr(torch.nn.Parameter, "__deepcopy__", whole_copy)  # each weight is cast, never deep-copied
    teacher = build_teacher(ModelConfig(student=str(tiny_model), dtype="bf16"), student, smol_tokenizer).model
    monkeypatch.undo()
    head = teacher.get_output_embeddings().weight
    assert head is teacher.get_input_embeddings().weight  # still tied, as in the student
    assert torch.equal(head, original.bfloat16())
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in teacher.parameters())
    assert all(p.dtype == torch.float32 and p.requires_grad for p in student.parameters())  # the student is untouched
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    assert torch.equal(head, original.bfloat16())  # no storage shared with the student


def test_a_teacher_with_padded_output_rows_scores_the_students_rows(tiny_model, prompts_file, tmp_path, smol_tokenizer):
    from opcd.config import ModelConfig
    from opcd.core.models import load_model
    from opcd.core.teachers import build_teacher

    vocab = len(smol_tokenizer)
    padded = make_tiny_model(tmp_path / "padded", smol_tokenizer, hidden=64, seed=1, vocab_size=vocab + 64)
    student = load_model(str(tiny_model), "fp32")
    model_cfg = ModelConfig(student=str(tiny_model), teacher=str(padded), dtype="fp32")
    teacher = build_teacher(model_cfg, student, smol_tokenizer)
    hidden = torch.randn(2, 3, 64)
    whole = teacher.model.get_output_embeddings()(hidden)
    assert whole.shape[-1] == vocab + 64
    assert torch.allclose(teacher.head(hidden, "fp32"), whole[..., :vocab])

    # sampling (off-policy: the teacher answers) stays on the student's rows, even where a padded row would win
    from opcd.config import RolloutConfig
    from opcd.core.rollout import HFSampler, eos_ids

    weight = teacher.model.get_output_embeddings().weight
    direction = torch.randn(weight.shape[1])
    weight.data[vocab], weight.data[vocab + 1] = 1e4 * direction, -1e4 * direction  # one of them tops every step
    greedy, ids = RolloutConfig(temperature=0, max_new_tokens=4), smol_tokenizer("Hello").input_ids
    args = (teacher.model, greedy, eos_ids(smol_tokenizer, teacher.model), smol_tokenizer.pad_token_id, "fp32")
    [(unrestricted, _)] = HFSampler(*args).generate([ids], seed=0)
    [(restricted, _)] = HFSampler(*args, rows=teacher.rows).generate([ids], seed=0)
    assert min(unrestricted) >= vocab and max(restricted) < vocab and len(restricted) == 4

    for mode in ("opcd", "offpolicy"):
        run = _run(tiny_model, prompts_file, tmp_path / mode, **{"model.teacher": str(padded), "loss.mode": mode})
        assert len(read_metrics(run / "metrics.jsonl")) == 2

    fewer = make_tiny_model(tmp_path / "fewer", smol_tokenizer, seed=2, vocab_size=vocab - 8)
    with pytest.raises(OpcdError, match=rf"has {vocab - 8} output rows, student .* has {vocab}: the teacher must"):
        _run(tiny_model, prompts_file, tmp_path / "run2", **{"model.teacher": str(fewer)})
    assert not (tmp_path / "run2" / "metrics.jsonl").exists()


def test_prompts_past_a_cross_size_teachers_window_are_refused(tiny_model, prompts_file, tmp_path, smol_tokenizer):
    short = make_tiny_model(tmp_path / "short", smol_tokenizer, seed=1, max_positions=24)
    with pytest.raises(
        OpcdError, match=r"prompt \+ context is \d+ tokens; .* exceeds the teacher's limit of 24 tokens"
    ):
        _run(tiny_model, prompts_file, tmp_path / "run", **{"model.teacher": str(short)})
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_mismatched_teacher_fails_before_training(tiny_model, prompts_file, tmp_path, qwen_tokenizer):
    other = make_tiny_model(tmp_path / "other", qwen_tokenizer)
    with pytest.raises(OpcdError, match=r"has \d+ tokens, student .* has 49152"):
        _run(tiny_model, prompts_file, tmp_path / "run", **{"model.teacher": str(other)})
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_batches_cover_every_example_each_epoch():
    seen = [i for step in range(1, 4) for i in batch_indices(12, 4, seed=3, step=step)]
    assert sorted(seen) == list(range(12))
    assert batch_indices(12, 4, 3, 2) == batch_indices(12, 4, 3, 2)
    assert batch_indices(12, 4, 3, 2) != batch_indices(12, 4, 4, 2)


def test_the_learning_rate_warms_up_then_follows_its_schedule():
    def rates(schedule):
        return [lr_at(TrainConfig(lr=1.0, steps=6, warmup_steps=2, lr_schedule=schedule), s) for s in range(1, 7)]

    assert rates("constant") == [0.5, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert rates("linear") == pytest.approx([0.5, 1.0, 1.0, 0.75, 0.5, 0.25])
    cosine = rates("cosine")
    assert cosine[:3] == pytest.approx([0.5, 1.0, 1.0])
    assert cosine[3] == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert all(a > b > 0 for a, b in zip(cosine[2:], cosine[3:], strict=False))


def test_a_larger_adam_epsilon_keeps_a_null_context_from_drifting(tmp_path, smol_tokenizer, prompts_file):
    """The null test on a tiny model: a context that changes almost nothing (a near-uniform model barely reads it).
    Adam's update is lr · m / (√v + ε); with the usual ε every weight moves by about the full rate whatever its
    gradient, so the student leaves the teacher it already matches (the KL jumps at step 2). With ε above the
    gradients, each weight moves in proportion to its gradient and the student stays near the teacher."""
    model = make_tiny_model(tmp_path / "near-uniform", smol_tokenizer, init_std=0.02)
    settings = {
        "data.context": "You are a helpful assistant.",
        "loss.min_kl": 0,
        "loss.estimator": "full",
        "train.steps": 6,
        "train.prompts_per_step": 12,
        "train.micro_batch_size": 6,
        "train.max_grad_norm": 0,
    }
    kl = {}
    for eps in (1e-8, 1e-4):
        run = _run(model, prompts_file, tmp_path / f"eps{eps}", **settings, **{"train.adam_eps": eps})
        kl[eps] = [r["kl/reverse_full"] for r in read_metrics(run / "metrics.jsonl")]
    assert kl[1e-8][0] == kl[1e-4][0]  # the same student and samples at step 1
    assert kl[1e-8][1] > 5 * kl[1e-8][0], kl  # the usual ε: one update moves the student away
    assert max(kl[1e-4]) < 2 * kl[1e-4][0], kl  # ε above the gradients: it stays where it was


def test_sampling_hands_the_head_a_contiguous_input(tiny_model, smol_tokenizer):
    """Hugging Face applies the head to a strided view of the prompt's last position; for weights that need no
    gradient (a frozen teacher, a LoRA base, a merged checkpoint) torch's matmul then copies the whole vocabulary head
    once per row. The sampler hands the head a contiguous input, and only while it samples."""
    from transformers import AutoModelForCausalLM

    from opcd.config import RolloutConfig
    from opcd.core.rollout import HFSampler, eos_ids

    model = AutoModelForCausalLM.from_pretrained(tiny_model).requires_grad_(False)
    head = model.get_output_embeddings()
    seen = []
    head.register_forward_hook(lambda module, args, out: seen.append(args[0].is_contiguous()))
    greedy = RolloutConfig(temperature=0, max_new_tokens=3)
    sampler = HFSampler(model, greedy, eos_ids(smol_tokenizer, model), smol_tokenizer.pad_token_id, "fp32")
    answers = sampler.generate([smol_tokenizer(t).input_ids for t in ("Hello there, how are you?", "Hi")], seed=0)
    assert len(answers) == 2 and seen and all(seen)
    assert not head._forward_pre_hooks  # removed after sampling
