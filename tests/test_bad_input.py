"""Every bad input gets one line on stderr and exit status 2, and creates or changes no run directory.

The cases are the table in docs/testing.md ("Bad input"); each row there is one case here."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from opcd.cli import main

from .conftest import TOY_CONTEXT


def _tree(path: Path) -> dict:
    """Every file under `path` and a digest of its bytes ({} when there is no such directory)."""
    if not path.exists():
        return {}
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture
def inputs(tmp_path, tiny_model, prompts_file):
    """Files the cases point at: a prompts file with bad UTF-8, a model directory with a corrupt config.json, one
    with truncated weights, and a run directory that is a file."""
    bad_utf8 = tmp_path / "latin1.jsonl"
    bad_utf8.write_bytes(b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n')
    corrupt = tmp_path / "corrupt-config"
    corrupt.mkdir()
    for f in tiny_model.iterdir():
        (corrupt / f.name).write_bytes(f.read_bytes())
    (corrupt / "config.json").write_text('{"model_type": "llama", ')
    truncated = tmp_path / "truncated-weights"
    truncated.mkdir()
    for f in tiny_model.iterdir():
        (truncated / f.name).write_bytes(f.read_bytes())
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    toml_inf = tmp_path / "inf.toml"
    toml_inf.write_text("[train]\nlr = inf\n")
    return {
        "bad_utf8": bad_utf8, "corrupt": corrupt, "truncated": truncated, "a_file": a_file, "empty": empty,
        "inf": toml_inf, "model": tiny_model, "prompts": prompts_file, "run": tmp_path / "run",
    }  # fmt: skip


def _train(i, *overrides, config="empty", flags=()):
    base = [
        f"model.student={i['model']}",
        "model.dtype=fp32",
        f"data.prompts={i['prompts']}",
        f"data.context={TOY_CONTEXT}",
        "rollout.max_new_tokens=4",
        "train.steps=1",
        "train.prompts_per_step=2",
        "train.report_to=none",
        f"train.run_dir={i['run']}",
    ]
    return ["train", str(i[config]), *base, *overrides, *flags]


def _eval(i, model, *flags):
    return ["eval", str(model), "--prompts", str(i["prompts"]), "--check", "starts_with:Arr!", "--no-ood", *flags]


# (case, args from the inputs, what the one line says)
CASES = [
    (
        "prompts not UTF-8 (train)",
        lambda i: _train(i, f"data.prompts={i['bad_utf8']}"),
        "latin1.jsonl:2: not valid UTF-8",
    ),
    ("prompts not UTF-8 (eval)", lambda i: _eval(i, i["model"], "--prompts", str(i["bad_utf8"])), "not valid UTF-8"),
    ("unknown model name", lambda i: _train(i, "model.student=no-such-model"), "not a packaged name"),
    ("relative model path", lambda i: _eval(i, "runs/pirate/checkpoints/step-000020/model"), "no such directory"),
    ("corrupt config.json", lambda i: _eval(i, i["corrupt"]), "cannot load it"),
    ("truncated weights", lambda i: _train(i, f"model.student={i['truncated']}"), "cannot load it"),
    ("run dir is a file", lambda i: _train(i, f"train.run_dir={i['a_file']}"), "is a file, not a directory"),
    ("rollout.top_k=-1", lambda i: _train(i, "rollout.top_k=-1"), "'rollout.top_k': -1 is out of range"),
    ("train.beta1=2", lambda i: _train(i, "train.beta1=2"), "'train.beta1': 2.0 is out of range"),
    ("weight_decay=-1", lambda i: _train(i, "train.weight_decay=-1"), "'train.weight_decay': -1.0 is out of range"),
    ("keep_checkpoints=-1", lambda i: _train(i, "train.keep_checkpoints=-1"), "'train.keep_checkpoints'"),
    ("warmup_steps=-1", lambda i: _train(i, "train.warmup_steps=-1"), "'train.warmup_steps': -1 is out of range"),
    ("lr = inf", lambda i: _train(i, config="inf"), "'train.lr': inf is not a finite number"),
    ("save_every=-1", lambda i: _train(i, "train.save_every=-1"), "'train.save_every': -1 is out of range"),
    ("max_prompts=-1", lambda i: _train(i, "data.max_prompts=-1"), "'data.max_prompts': -1 is out of range"),
    ("max_grad_norm=-1", lambda i: _train(i, "train.max_grad_norm=-1"), "'train.max_grad_norm'"),
    ("model.device=cuda", lambda i: _train(i, "model.device=cuda"), "no CUDA device"),
    ("model.device=foo", lambda i: _train(i, "model.device=foo"), "use auto, cpu, cuda or cuda:N"),
    ("--max-new-tokens -5", lambda i: _eval(i, i["model"], "--max-new-tokens", "-5"), "--max-new-tokens -5"),
    ("--resume with nothing", lambda i: _train(i, flags=("--resume",)), "holds no checkpoint to resume from"),
]


@pytest.mark.parametrize("case, args, says", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_one_line_and_exit_2_and_leaves_no_run_dir(inputs, capsys, case, args, says):
    if "cuda" in case and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    before = _tree(inputs["run"])
    assert main(args(inputs)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("opcd: error: "), err
    assert says in err[0], err[0]
    assert _tree(inputs["run"]) == before and not inputs["run"].exists()
