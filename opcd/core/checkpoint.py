"""Checkpoints: a Hugging Face model directory (or PEFT adapter) plus the trainer state needed to resume exactly.

Layout: `RUN/checkpoints/step-000010/{model/, trainer_state.pt, identity.json}`. Each checkpoint is written into a
hidden temporary directory and renamed into place, so a run killed mid-save leaves either the old set of checkpoints
or the new one, never a half-written directory that resume would trust (the next run removes the leftover). The two
newest checkpoints keep `trainer_state.pt` (the optimizer state is twice the model in fp32: 5 GB for a 0.5B model), so
a corrupt newest one falls back to the one before; older ones keep their model for evaluation and selection.

The trainer state holds only tensors and plain Python values and is read with `torch.load(weights_only=True)`: a run
directory from elsewhere cannot run code when resumed. Its identity (the training config without `train.run_dir`, and
digests of the prompts and context files) is compared on resume, so a moved run resumes and a changed one is refused.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from opcd.config import Config, load_config
from opcd.core.data import file_digest
from opcd.errors import OpcdError

CHECKPOINTS = "checkpoints"
STATE, IDENTITY = "trainer_state.pt", "identity.json"
RESUMABLE_KEPT = 2  # checkpoints that keep their trainer state: the newest, and one to fall back to
TRAINING_SECTIONS = ("model", "data", "rollout", "loss", "train")  # what a run's identity is made of
# what a resumed run may change: how long it runs, how it saves, logs and watches, and where its directory lives
RESUMABLE_CHANGES = {
    ("train", "steps"),
    ("train", "save_every"),
    ("train", "keep_checkpoints"),
    ("train", "report_to"),
    ("train", "log_samples_every"),
    ("train", "eval_every"),
    ("train", "eval_prompts"),
    ("train", "eval_max_prompts"),
    ("train", "run_dir"),
}


def step_dir(run_dir: Path, step: int) -> Path:
    return run_dir / CHECKPOINTS / f"step-{step:06d}"


def list_checkpoints(run_dir: Path, resumable: bool = False) -> list[tuple[int, Path]]:
    """(step, path) of every finished checkpoint, oldest first; `resumable`: only those holding trainer state."""
    root = run_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    need = STATE if resumable else "model"
    return sorted((int(p.name.split("-")[1]), p) for p in root.glob("step-*") if (p / need).exists())


def remove_leftovers(run_dir: Path) -> None:
    """The hidden temporary directories of checkpoint writes that a killed run left (its holder is gone)."""
    for tmp in (run_dir / CHECKPOINTS).glob(".step-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def rng_state() -> dict:
    """Every generator's state as tensors and plain values (what `weights_only` loading accepts)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))


def inputs_identity(cfg: Config) -> dict:
    """Digests of the files a run reads its data from: a changed file is a changed run."""
    return {"data.prompts": file_digest(cfg.data.prompts), "data.context_file": file_digest(cfg.data.context_file)}


def _human(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _check_space(run_dir: Path, target: Path) -> None:
    """Refuse a write the disk cannot hold: a checkpoint takes about what the last one took."""
    found = list_checkpoints(run_dir)
    if not found:
        return
    need, free = _size(found[-1][1]), shutil.disk_usage(target.parent).free
    if free < need * 1.05:
        raise OpcdError(
            f"not enough disk space for checkpoint {target}: it needs about {_human(need)} and {_human(free)} "
            "are free. Earlier checkpoints are intact: free space, lower train.keep_checkpoints, "
            "or move the run directory to a bigger disk (it resumes there), then rerun with --resume"
        )


def _prune(run_dir: Path, keep: int, before_write: bool) -> None:
    """Keep the newest `keep` checkpoints (0 = all). Before a write, room is made for the new one, but the newest
    checkpoint always stays until the new one is complete."""
    found = list_checkpoints(run_dir)
    if keep:
        room = max(keep - 1, 1) if before_write else keep
        for _, old in found[:-room]:
            shutil.rmtree(old)
    for _, old in list_checkpoints(run_dir)[:-RESUMABLE_KEPT]:
        (old / STATE).unlink(missing_ok=True)


def _disk_message(target: Path, e: Exception) -> str:
    """One plain line for a failed write; called before the partial write is removed, so a full disk shows."""
    full = getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(e)
    full = full or shutil.disk_usage(target.parent).free < 1 << 20  # torch.save reports it in C++ terms
    if full:
        return (
            f"the disk filled up while writing checkpoint {target}. Earlier checkpoints are intact: free space, lower "
            "train.keep_checkpoints, or move the run directory to a bigger disk (it resumes there), then rerun with "
            "--resume"
        )
    reason = getattr(e, "strerror", None) or str(e).splitlines()[0]
    return f"could not write checkpoint {target} ({reason}); earlier checkpoints are intact: rerun with --resume"


def save(
    run_dir: Path, step: int, student, tokenizer, trainer_state: dict, keep: int = 0, state_dict: dict | None = None
) -> Path:
    """Write checkpoint `step` atomically; `state_dict`: the whole weights when the student itself is sharded."""
    target = step_dir(run_dir, step)
    target.parent.mkdir(parents=True, exist_ok=True)
    _prune(run_dir, keep, before_write=True)
    _check_space(run_dir, target)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        student.save_pretrained(tmp / "model", state_dict=state_dict)
        tokenizer.save_pretrained(tmp / "model")
        torch.save(trainer_state, tmp / STATE)
        identity = {"config": trainer_state["config"], "inputs": trainer_state["inputs"]}
        (tmp / IDENTITY).write_text(json.dumps(identity, indent=1))
        if target.exists():  # an earlier, interrupted run saved this step; the new one replaces it
            shutil.rmtree(target)
        os.replace(tmp, target)
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
        raise OpcdError(_disk_message(target, e)) from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _prune(run_dir, keep, before_write=False)
    return target


class Unreadable(Exception):
    """A checkpoint that cannot be resumed from: truncated, corrupt, or not written by opcd."""


def load_trainer_state(path: Path) -> dict:
    """The trainer state, read without running any code it might hold; `Unreadable` if it cannot be read so."""
    try:
        return torch.load(path / STATE, weights_only=True)
    except (pickle.UnpicklingError, EOFError, RuntimeError, OSError, ValueError) as e:
        raise Unreadable(f"{path / STATE}: {str(e).splitlines()[0] or type(e).__name__}") from None


def _check_weights(path: Path) -> None:
    """Every weight file's header and size are consistent (a truncated file fails here, before any model loads)."""
    for shard in (path / "model").glob("*.safetensors"):
        try:
            with safe_open(shard, "pt") as f:
                f.keys()
        except (SafetensorError, OSError) as e:
            raise Unreadable(f"{shard}: {str(e).splitlines()[0]}") from None


def changed_keys(saved: dict, now: dict) -> list[str]:
    """`section.key` of every training setting that differs between two config dicts (resumable changes aside); a key
    the saved config lacks (one added since) counts as its default."""
    default = Config().to_dict()
    resumable = set(RESUMABLE_CHANGES)
    loss = now["loss"]
    if now["train"]["lr_schedule"] != "constant" or (loss["teacher_share"] and not loss["teacher_share_steps"]):
        resumable.discard(("train", "steps"))  # a schedule that follows train.steps would change mid-run
    return [
        f"{s}.{k}"
        for s in TRAINING_SECTIONS
        for k in now[s]
        if now[s][k] != saved.get(s, {}).get(k, default[s].get(k)) and (s, k) not in resumable
    ]


def _differences(identity: dict, cfg: Config) -> list[str]:
    changed = changed_keys(identity["config"], cfg.to_dict())
    saved = identity.get("inputs", {})
    return changed + [f"the content of {k}" for k, v in inputs_identity(cfg).items() if k in saved and saved[k] != v]


def check_resumable(run_dir: Path, cfg: Config) -> None:
    """Before expensive work: refuse a run directory whose checkpoints were made with another config or data."""
    found = list_checkpoints(run_dir, resumable=True)
    if not found:
        return
    newest = found[-1][1]
    if (newest / IDENTITY).is_file():
        identity = json.loads((newest / IDENTITY).read_text())
    elif (run_dir / "config.toml").is_file():
        identity = {"config": load_config(run_dir / "config.toml", []).to_dict()}
    else:
        return
    changed = _differences(identity, cfg)
    if changed:
        raise OpcdError(f"cannot resume {run_dir}: changed since the checkpoint: {', '.join(changed)}")


def resume_point(run_dir: Path, cfg: Config, resume: bool | str) -> tuple[int, dict | None, Path | None]:
    """(step, trainer state, checkpoint) to continue from; (0, None, None) for a fresh run.

    `resume`: False (a directory with checkpoints is refused), True (a checkpoint to resume from is required), or
    "if-possible" (resume if there is one, else start). An unreadable newest checkpoint falls back to the one before."""
    found = list_checkpoints(run_dir, resumable=True)
    if list_checkpoints(run_dir) and not resume:
        raise OpcdError(
            f"{run_dir} already holds checkpoints: pass --resume to continue, or choose another train.run_dir"
        )
    if not resume:
        return 0, None, None
    if not found:
        if resume == "if-possible":
            return 0, None, None
        raise OpcdError(
            f"--resume: {run_dir} holds no checkpoint to resume from (none with {STATE}): run without --resume to "
            "start it, or pass --resume=if-possible"
        )
    problems = []
    for step, path in reversed(found):
        try:
            state = load_trainer_state(path)
            _check_weights(path)
        except Unreadable as e:
            problems.append(str(e))
            print(f"opcd: warning: cannot resume from {path} ({e}); trying the checkpoint before it")
            continue
        changed = _differences(state, cfg)
        if changed:
            raise OpcdError(f"cannot resume {run_dir}: changed since the checkpoint: {', '.join(changed)}")
        return step, state, path
    raise OpcdError(
        f"cannot resume {run_dir}: no checkpoint can be read safely ({problems[0]}); a trainer state from opcd < 0.2 "
        "or from elsewhere is refused: start again in another train.run_dir"
    )


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
        raise OpcdError(
            f"checkpoint {path} does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )


def _is_tied(model, key: str) -> bool:
    head = model.get_output_embeddings()
    return head is not None and key.endswith("weight") and head.weight is model.get_input_embeddings().weight
