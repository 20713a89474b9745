"""Per-token distillation losses: pure functions, tensors in, tensors out.

Shapes: B sequences, T response positions, V vocabulary, K top-k. `*_logits` are the raw logits that predict response
token t at position t (already aligned by the caller). Every function returns per-token values `[B, T]`; reduce them
with `reduction_weights` so that the loss of an optimizer step does not depend on how it is split into micro-batches.
Teacher values never carry gradient. Top-k indices are constants for autograd. Log-probabilities are always the
full-vocabulary `log_softmax(logits / temperature)` (in fp32), gathered afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor


def _logprobs(logits: Tensor, temperature: float) -> Tensor:
    """Full-vocabulary log-probabilities in at least fp32 (bf16 logits are upcast; float64 stays float64)."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if temperature != 1.0:  # x / 1 is x: no full-vocabulary copy for it
        logits = logits / temperature
    return F.log_softmax(logits, dim=-1)


def _restrict(
    logp_s: Tensor, logp_t: Tensor, ranked_by: Literal["student", "teacher"], top_k: int | None, renormalize: bool
) -> tuple[Tensor, Tensor]:
    """Gather both log-probs at the top-k tokens of one side (constant indices); optionally renormalize on that set."""
    if top_k is None or top_k >= logp_s.shape[-1]:
        return logp_s, logp_t
    idx = (logp_s if ranked_by == "student" else logp_t).detach().topk(top_k, dim=-1).indices
    logp_s, logp_t = logp_s.gather(-1, idx), logp_t.gather(-1, idx)
    if renormalize:
        logp_s = logp_s - logp_s.logsumexp(-1, keepdim=True)
        logp_t = logp_t - logp_t.logsumexp(-1, keepdim=True)
    return logp_s, logp_t


def token_reverse_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    top_k: int | None = 256,
    renormalize: bool = False,
    temperature: float = 1.0,
) -> Tensor:
    """OPCD's objective: D_t = Σ_{v ∈ S_t} p_s(v) (log p_s(v) − log p_t(v)), shape [B, T].

    S_t is the student's top-k set at position t (`top_k=None`, or k ≥ V: the whole vocabulary). Without
    renormalization it is a partial sum of the full-vocabulary KL (the paper's default); with `renormalize=True` both
    distributions are first renormalized on S_t. The gradient is analytic, through both p_s and log p_s.
    """
    logp_s, logp_t = _restrict(
        _logprobs(student_logits, temperature),
        _logprobs(teacher_logits.detach(), temperature),
        "student",
        top_k,
        renormalize,
    )
    return (logp_s.exp() * (logp_s - logp_t)).sum(-1)


def token_forward_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    top_k: int | None = 256,
    renormalize: bool = False,
    temperature: float = 1.0,
) -> Tensor:
    """Off-policy baseline: Σ_{v ∈ S_t} p_t(v) (log p_t(v) − log p_s(v)) over the *teacher's* top-k set S_t, [B, T]."""
    logp_s, logp_t = _restrict(
        _logprobs(student_logits, temperature),
        _logprobs(teacher_logits.detach(), temperature),
        "teacher",
        top_k,
        renormalize,
    )
    return (logp_t.exp() * (logp_t - logp_s)).sum(-1)


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 − exp(x)) for x ≤ 0, accurate near both ends; clamped so an (almost) empty tail stays finite."""
    x = x.clamp(max=-1e-7)
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def token_reverse_kl_tail(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    top_k: int = 256,
    temperature: float = 1.0,
) -> Tensor:
    """Top-k reverse KL with a tail bucket: the student's top-k tokens plus one category holding the remaining mass
    of each distribution, an exact KL between two (k+1)-category distributions, [B, T]. Unlike the partial sum, the
    student cannot lower it by moving mass out of its own top-k."""
    logp_s, logp_t = _restrict(
        _logprobs(student_logits, temperature), _logprobs(teacher_logits.detach(), temperature), "student", top_k, False
    )
    tail_s = _log1mexp(logp_s.logsumexp(-1, keepdim=True))
    tail_t = _log1mexp(logp_t.logsumexp(-1, keepdim=True))
    logp_s, logp_t = torch.cat([logp_s, tail_s], -1), torch.cat([logp_t, tail_t], -1)
    return (logp_s.exp() * (logp_s - logp_t)).sum(-1)


def sampled_logprobs(logits: Tensor, tokens: Tensor, temperature: float = 1.0) -> Tensor:
    """log p(y_t) of the given tokens [B, T] under `logits` [B, T, V]."""
    return _logprobs(logits, temperature).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def reward_to_go(rewards: Tensor, mask: Tensor, discount: float) -> Tensor:
    """R_t = Σ_{t' ≥ t} discount^(t'−t) r_t' over valid positions, [B, T]. discount = 0 returns r itself."""
    rewards = rewards * mask
    if discount == 0:
        return rewards
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in range(rewards.shape[1] - 1, -1, -1):
        running = rewards[:, t] + discount * running
        out[:, t] = running
    return out * mask


def sampled_reverse_kl_surrogate(
    student_logits: Tensor,
    teacher_logits: Tensor,
    response_ids: Tensor,
    mask: Tensor,
    *,
    discount: float = 0.0,
    temperature: float = 1.0,
) -> Tensor:
    """Policy-gradient surrogate of the reverse KL from the sampled tokens only, [B, T].

    Per-token reward r_t = log p_t(y_t) − log p_s(y_t) (stop-gradient); surrogate_t = −R_t · log p_s(y_t) with R the
    discounted reward-to-go. Its *expected gradient* over y ~ p_s equals the gradient of the per-token reverse KL
    (discount 0) or of the sequence-level reverse KL (discount 1); its value is not a KL (log −r for that).
    """
    logp_s = sampled_logprobs(student_logits, response_ids, temperature)
    logp_t = sampled_logprobs(teacher_logits.detach(), response_ids, temperature)
    returns = reward_to_go((logp_t - logp_s).detach(), mask, discount)
    return -returns * logp_s


def token_nll(student_logits: Tensor, response_ids: Tensor, *, temperature: float = 1.0) -> Tensor:
    """SFT baseline: −log p_s(y_t), [B, T]."""
    return -sampled_logprobs(student_logits, response_ids, temperature)


def reduction_weights(
    mask: Tensor,
    reduction: Literal["token", "sequence"],
    *,
    total_tokens: int,
    total_sequences: int,
) -> Tensor:
    """Per-token weights w [B, T] such that loss = Σ w · values.

    "token": the global token mean over the optimizer step, w = mask / total_tokens. "sequence": the mean over each
    sequence's tokens, then over the step's sequences, w = mask / (len_b · total_sequences). The totals are those of
    the whole optimizer step (all micro-batches, all ranks), which is what makes the loss split-invariant.
    """
    mask = mask.float()
    if reduction == "token":
        return mask / max(total_tokens, 1)
    lengths = mask.sum(-1, keepdim=True).clamp(min=1)
    return mask / (lengths * max(total_sequences, 1))


# (student_logits, teacher_logits, response_ids, positions) -> [B, T]; positions: the chunk's slice of the response
TokenLoss = Callable[[Tensor, Tensor | None, Tensor, slice], Tensor]


def backward_chunked(
    student_hidden: Tensor,
    teacher_hidden: Tensor | None,
    student_head: Callable[[Tensor], Tensor],
    teacher_head: Callable[[Tensor], Tensor] | None,
    response_ids: Tensor,
    weights: Tensor,
    token_loss: TokenLoss,
    chunk_size: int,
    on_chunk: Callable[[Tensor, Tensor | None, slice], None] | None = None,
) -> Tensor:
    """Backpropagate Σ w · token_loss through the student, a chunk of positions at a time; returns values [B, T].

    Only one chunk's logits (student and teacher, [B, chunk, V]) exist at a time: each chunk's loss is backpropagated
    into the heads and into a detached copy of the hidden states right away, and the hidden-state gradient is then
    sent through the rest of the student in one backward call. The result equals the unchunked loss's gradient.
    `on_chunk(student_logits, teacher_logits, positions)` sees each chunk's logits (no grad) for diagnostics.
    """
    hidden = student_hidden.detach().requires_grad_(student_hidden.requires_grad)
    values = []
    for start in range(0, hidden.shape[1], chunk_size):
        pos = slice(start, start + chunk_size)
        # contiguous: a strided [B, chunk, H] view sends the CPU's bf16 matmul down a path ~70x slower
        student_logits = student_head(hidden[:, pos].contiguous())
        with torch.no_grad():
            teacher_logits = teacher_head(teacher_hidden[:, pos].contiguous()) if teacher_hidden is not None else None
        chunk_values = token_loss(student_logits, teacher_logits, response_ids[:, pos], pos)
        if hidden.requires_grad:
            (chunk_values * weights[:, pos]).sum().backward()
        if on_chunk is not None:
            on_chunk(student_logits.detach(), teacher_logits, pos)
        values.append(chunk_values.detach())
    if student_hidden.requires_grad and hidden.grad is not None:
        student_hidden.backward(hidden.grad)
    return torch.cat(values, dim=1)
