"""Teachers: who scores the student's response with the context in view.

- `frozen` (default, the paper's): the initial student, frozen. Under LoRA it is the student with its adapter
  disabled, so it costs no memory; under full fine-tuning, a frozen copy in the compute dtype.
- a model name or path: a different (larger) model of the same tokenizer family, checked at start-up.
- `live`: the current student itself (the paper's self-distillation ablation; can diverge).
- `ema`: an exponential moving average of the student (suggested, untested in the paper).
"""

from __future__ import annotations

import copy
from contextlib import contextmanager

import torch

from opcd.config import ModelConfig
from opcd.core import models
from opcd.core.rollout import autocast, device_of, resolve_device
from opcd.core.scoring import PrefixCache, grouped_hidden
from opcd.errors import OpcdError


class Teacher:
    """Holds the model that plays teacher; `active()` yields it in eval mode with any adapter switched off."""

    def __init__(
        self,
        model,
        *,
        student=None,
        adapter_off: bool = False,
        ema_decay: float | None = None,
        cache: PrefixCache | None = None,
        rows: int | None = None,
        fixed: bool = True,
    ):
        self.model = model
        self.student = student
        self.adapter_off = adapter_off
        self.ema_decay = ema_decay
        self.cache = cache  # only for teachers whose weights never change
        self.rows = rows  # a teacher with more (padding) output rows than the student: score only the student's
        self.fixed = fixed and ema_decay is None  # its weights never change during the run (live and ema change)

    @contextmanager
    def active(self):
        model = self.model
        was_training = model.training
        model.eval()
        try:
            if self.adapter_off:
                with model.disable_adapter():
                    yield model
            else:
                yield model
        finally:
            model.train(was_training)

    @torch.no_grad()
    def hidden(self, prompts, responses, prefix_lens, pad_id: int, dtype: str) -> torch.Tensor:
        """Teacher hidden states that predict each response token, [B, R, H], context prefixes from the cache."""
        with self.active() as model, autocast(dtype, device_of(model)):
            return grouped_hidden(model, prompts, responses, prefix_lens, pad_id, self.cache)

    @torch.no_grad()
    def head(self, hidden: torch.Tensor, dtype: str) -> torch.Tensor:
        with self.active() as model, autocast(dtype, device_of(model)):
            head = model.get_output_embeddings()
            if self.rows is None:
                return head(hidden)
            bias = None if head.bias is None else head.bias[: self.rows]
            return torch.nn.functional.linear(hidden, head.weight[: self.rows], bias)

    @torch.no_grad()
    def after_step(self) -> None:
        """EMA teachers move toward the student after every optimizer step."""
        if self.ema_decay is None:
            return
        for t, s in zip(self.model.parameters(), self.student.parameters(), strict=True):
            t.lerp_(s.detach().to(t.dtype), 1.0 - self.ema_decay)

    def state_dict(self) -> dict:
        return self.model.state_dict() if self.ema_decay is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.ema_decay is not None:
            self.model.load_state_dict(state)


def _frozen_copy(student, dtype: str, device: str):
    """The student's structure with its own copy of every weight, cast one tensor at a time: a whole-model deepcopy
    would first hold a second full-precision model (an 8B fp32 student: 32 GB more, for a moment)."""
    cast, target = models.DTYPES[dtype], resolve_device(device) if device else None
    weights = {  # by id, so tied weights (embedding and head) stay one tensor in the copy
        id(p): torch.nn.Parameter(
            p.detach().to(device=target or p.device, dtype=cast if p.is_floating_point() else p.dtype, copy=True),
            requires_grad=False,
        )
        for p in student.parameters()
    }
    teacher = copy.deepcopy(student, memo=weights)  # only the buffers (small) are copied whole, then cast and moved
    return teacher.to(device=target, dtype=cast).eval().requires_grad_(False)


def build_teacher(cfg: ModelConfig, student, student_tokenizer) -> Teacher:
    lora = cfg.lora_rank > 0
    cache = PrefixCache() if cfg.teacher_cache else None
    if cfg.teacher == "frozen":
        if lora:
            return Teacher(student, adapter_off=True, cache=cache)
        return Teacher(_frozen_copy(student, cfg.dtype, cfg.teacher_device), cache=cache)
    if cfg.teacher == "live":
        return Teacher(student, fixed=False)
    if cfg.teacher == "ema":
        if lora:
            raise OpcdError("model.teacher = 'ema' needs full fine-tuning: set model.lora_rank = 0")
        if cfg.teacher_device:
            raise OpcdError("model.teacher = 'ema' lives beside the student: leave model.teacher_device empty")
        # fp32, as the student's master weights: in bf16 a step of (1 - decay) = 0.001 mostly rounds away
        return Teacher(_frozen_copy(student, "fp32", ""), student=student, ema_decay=cfg.ema_decay)
    teacher_tokenizer = models.load_tokenizer(cfg.teacher)
    models.check_compatible(student_tokenizer, teacher_tokenizer, cfg.student, cfg.teacher)
    model = models.load_model(cfg.teacher, cfg.dtype).eval().requires_grad_(False)
    model = model.to(resolve_device(cfg.teacher_device) if cfg.teacher_device else device_of(student))
    rows, student_rows = models.vocab_rows(model), models.vocab_rows(student)
    if rows < student_rows:
        raise OpcdError(
            f"teacher '{cfg.teacher}' has {rows} output rows, student '{cfg.student}' has {student_rows}: the teacher "
            "must score every token the student can sample; use a teacher with at least as many rows"
        )
    # Checkpoints of one family pad their output rows differently (Qwen2.5: 151,936 up to 1.5B, 152,064 from 7B);
    # rows past the tokenizer are never real tokens, so the teacher's extra ones are left out of its distribution.
    return Teacher(model, cache=cache, rows=student_rows if rows > student_rows else None)
