"""The three training modes and the estimators, as lookups rather than an if/elif ladder in the loop.

A mode says who samples the response and which per-token loss trains the student on it:
- `opcd`: the student samples from its own prompt; reverse KL to the teacher (estimator: topk, full, tail, sampled).
- `offpolicy`: the teacher samples with the context; forward KL over the teacher's top-k (the paper's baseline).
- `sft`: the teacher samples with the context; negative log-likelihood of its tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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


def is_full_reverse_kl(cfg: LossConfig) -> bool:
    """The per-token loss is the exact full-vocabulary reverse KL (then it is also the logged `kl/reverse_full`)."""
    return cfg.mode == "opcd" and cfg.estimator == "full"


def uses_student_topk(cfg: LossConfig) -> bool:
    """The loss sees only the student's top-k tokens (then the mass inside them is worth watching)."""
    return cfg.mode == "opcd" and cfg.estimator in ("topk", "tail")


def needs_returns(cfg: LossConfig) -> bool:
    return cfg.mode == "opcd" and cfg.estimator == "sampled" and cfg.discount > 0
