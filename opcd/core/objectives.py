"""The three training modes and the estimators, as lookups rather than an if/elif ladder in the loop.

A mode says who samples the response and which per-token loss trains the student on it:
- `opcd`: the student samples from its own prompt; reverse KL to the teacher (estimator: topk, full, tail, sampled).
- `offpolicy`: the teacher samples with the context; forward KL over the teacher's top-k (the paper's baseline).
- `sft`: the teacher samples with the context; negative log-likelihood of its tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from opcd.config import LossConfig
from opcd.core import losses


@dataclass(frozen=True)
class Mode:
    sampler: Literal["student", "teacher"]  # whose policy (and prompt) produces the response
    uses_teacher_logits: bool


MODES: dict[str, Mode] = {
    "opcd": Mode(sampler="student", uses_teacher_logits=True),
    "offpolicy": Mode(sampler="teacher", uses_teacher_logits=True),
    "sft": Mode(sampler="teacher", uses_teacher_logits=False),
}


def _estimators(cfg: LossConfig, temp: float) -> dict[str, losses.TokenLoss]:
    k = cfg.top_k
    return {
        "topk": lambda s, t, y, pos: losses.token_reverse_kl(
            s, t, top_k=k, renormalize=cfg.renormalize, temperature=temp
        ),
        "full": lambda s, t, y, pos: losses.token_reverse_kl(s, t, top_k=None, temperature=temp),
        "tail": lambda s, t, y, pos: losses.token_reverse_kl_tail(s, t, top_k=k, temperature=temp),
        "sampled": lambda s, t, y, pos: losses.sampled_reverse_kl_surrogate(
            s, t, y, y.new_ones(y.shape, dtype=bool), discount=0.0, temperature=temp
        ),
    }


def token_loss(cfg: LossConfig, temperature: float) -> losses.TokenLoss:
    """The chunk-local per-token loss of a mode (for `sampled` with discount > 0 see `sampled_with_returns`)."""
    if cfg.mode == "offpolicy":
        return lambda s, t, y, pos: losses.token_forward_kl(
            s, t, top_k=cfg.top_k, renormalize=cfg.renormalize, temperature=temperature
        )
    if cfg.mode == "sft":
        return lambda s, t, y, pos: losses.token_nll(s, y, temperature=temperature)
    return _estimators(cfg, temperature)[cfg.estimator]


def sampled_reward(temperature: float) -> losses.TokenLoss:
    """Per-token reward log p_t(y_t) − log p_s(y_t), for the pre-pass of the reward-to-go estimator."""
    return lambda s, t, y, pos: losses.sampled_logprobs(t, y, temperature) - losses.sampled_logprobs(s, y, temperature)


def sampled_with_returns(returns: Tensor, temperature: float) -> losses.TokenLoss:
    """−R_t · log p_s(y_t) with the reward-to-go R precomputed over the whole response."""
    return lambda s, t, y, pos: -returns[:, pos] * losses.sampled_logprobs(s, y, temperature)


def teacher_share(cfg: LossConfig, step: int, steps: int) -> float:
    """The share of step `step`'s (1-based) rollouts the teacher answers: `loss.teacher_share` at step 1, falling
    linearly to 0 at step `loss.teacher_share_steps` + 1 (default: after the run's last step)."""
    if cfg.mode != "opcd" or not cfg.teacher_share:
        return 0.0
    span = cfg.teacher_share_steps or steps
    return cfg.teacher_share * max(0.0, 1 - (step - 1) / span)


def mixed_loss(cfg: LossConfig, temperature: float, by_teacher: Tensor) -> losses.TokenLoss:
    """OPCD's per-token loss on the student's own rows, the off-policy forward KL on the teacher's (`by_teacher`, [B]):
    reverse KL gives a token the student almost never samples almost no gradient, forward KL on the teacher's
    answers gives it the teacher's probability."""
    reverse = token_loss(cfg, temperature)
    forward = token_loss(LossConfig(mode="offpolicy", top_k=cfg.top_k, renormalize=cfg.renormalize), temperature)
    rows = by_teacher[:, None]
    return lambda s, t, y, pos: torch.where(rows, forward(s, t, y, pos), reverse(s, t, y, pos))


def is_full_reverse_kl(cfg: LossConfig) -> bool:
    """The per-token loss is the exact full-vocabulary reverse KL (then it is also the logged `kl/reverse_full`)."""
    return cfg.mode == "opcd" and cfg.estimator == "full"


def uses_student_topk(cfg: LossConfig) -> bool:
    """The loss sees only the student's top-k tokens (then the mass inside them is worth watching)."""
    return cfg.mode == "opcd" and cfg.estimator in ("topk", "tail")


def needs_returns(cfg: LossConfig) -> bool:
    return cfg.mode == "opcd" and cfg.estimator == "sampled" and cfg.discount > 0
