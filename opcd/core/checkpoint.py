"""Checkpoints: a Hugging Face model directory (or PEFT adapter) plus the trainer state needed to resume exactly.

Layout: `RUN/checkpoints/step-000010/{model/, trainer_state.pt}`. Each checkpoint is written into a hidden temporary
directory and renamed into place, so a run killed mid-save leaves either the old set of checkpoints or the new one,
never a half-written directory that resume would trust. Only the newest checkpoint keeps `trainer_state.pt` (the
optimizer state is twice the model in fp32: 5 GB for a 0.5B model); older ones keep their model for evaluation and
checkpoint selection.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from opcd.config import Config, load_config
from opcd.errors import OpcdError

CHECKPOINTS = "checkpoints"
TRAINING_SECTIONS = ("model", "data", "rollout", "loss", "train")  # what a run's identity is made of
# what a resumed run may change: how long it runs and how it saves and logs, not what it trains
RESUMABLE_CHANGES = {
    ("train", "steps"),
    ("train", "save_every"),
    ("train", "keep_checkpoints"),
    ("train", "tensorboard"),
}


def step_dir(run_dir: Path, step: int) -> Path:
    return run_dir / CHECKPOINTS / f"step-{step:06d}"


def list_checkpoints(run_dir: Path, resumable: bool = False) -> list[tuple[int, Path]]:
    """(step, path) of every finished checkpoint, oldest first; `resumable`: only those holding trainer state."""
    root = run_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    need = "trainer_state.pt" if resumable else "model"
    return sorted((int(p.name.split("-")[1]), p) for p in root.glob("step-*") if (p / need).exists())


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def save(
    run_dir: Path, step: int, student, tokenizer, trainer_state: dict, keep: int = 0, state_dict: dict | None = None
) -> Path:
    """Write checkpoint `step` atomically; `state_dict`: the whole weights when the student itself is sharded."""
    target = step_dir(run_dir, step)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        student.save_pretrained(tmp / "model", state_dict=state_dict)
        tokenizer.save_pretrained(tmp / "model")
        torch.save(trainer_state, tmp / "trainer_state.pt")
        if target.exists():  # an earlier, interrupted run saved this step; the new one replaces it
            shutil.rmtree(target)
        os.replace(tmp, target)
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
        reason = getattr(e, "strerror", None) or str(e).splitlines()[0]
        raise OpcdError(
            f"could not write checkpoint {target} ({reason}); earlier checkpoints are intact: "
            "free space or set train.keep_checkpoints, then rerun with --resume"
        ) from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for step_, old in list_checkpoints(run_dir):
        if step_ != step:
            (old / "trainer_state.pt").unlink(missing_ok=True)
    if keep:
        for _, old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old)
    return target


def load_trainer_state(path: Path) -> dict:
    return torch.load(path / "trainer_state.pt", weights_only=False)


def load_student_weights(student, path: Path) -> None:
    """Load a checkpoint's weights into the already-built student (full model or PEFT adapter)."""
    model_dir = path / "model"
    if hasattr(student, "load_adapter") and (model_dir / "adapter_config.json").exists():
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(student, load_file(model_dir / "adapter_model.safetensors"))
        return
    state = {}
    for shard in sorted(model_dir.glob("*.safetensors")):
        state.update(load_file(shard))
    missing, unexpected = student.load_state_dict(state, strict=False)
    missing = [k for k in missing if not _is_tied(student, k)]
    if missing or unexpected:
        raise RuntimeError(
            f"checkpoint {path} does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )


def _is_tied(model, key: str) -> bool:
    head = model.get_output_embeddings()
    return head is not None and key.endswith("weight") and head.weight is model.get_input_embeddings().weight


def changed_keys(saved: dict, now: dict) -> list[str]:
    """`section.key` of every training setting that differs between two config dicts (resumable changes aside)."""
    return [
        f"{s}.{k}"
        for s in TRAINING_SECTIONS
        for k in now[s]
        if now[s][k] != saved.get(s, {}).get(k) and (s, k) not in RESUMABLE_CHANGES
    ]


def check_resumable(run_dir: Path, cfg: Config) -> None:
    """Before expensive work: refuse a run directory whose checkpoints were made with another config."""
    if list_checkpoints(run_dir, resumable=True) and (run_dir / "config.toml").is_file():
        changed = changed_keys(load_config(run_dir / "config.toml", []).to_dict(), cfg.to_dict())
        if changed:
            raise OpcdError(f"cannot resume {run_dir}: config changed since the checkpoint ({', '.join(changed)})")


def resume_point(run_dir: Path, cfg: Config, resume: bool) -> tuple[int, dict | None, Path | None]:
    """(step, trainer state, checkpoint) to continue from; (0, None, None) for a fresh run."""
    found = list_checkpoints(run_dir, resumable=True)
    if list_checkpoints(run_dir) and not resume:
        raise OpcdError(
            f"{run_dir} already holds checkpoints: pass --resume to continue, or choose another train.run_dir"
        )
    if not (resume and found):
        return 0, None, None
    step, path = found[-1]
    state = load_trainer_state(path)
    changed = changed_keys(state["config"], cfg.to_dict())
    if changed:
        raise OpcdError(f"cannot resume {run_dir}: config changed since the checkpoint ({', '.join(changed)})")
    return step, state, path
