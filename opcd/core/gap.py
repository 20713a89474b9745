"""The context gap: how far a model without the context is from the teacher with it, on prompts it was not trained on.

Two directions, both in nats per response token, at the rollout temperature, over the full vocabulary:

- `reverse_kl`: on the model's own samples y ~ model(· | x), the mean over tokens of
  KL(model(· | x, y<t) ‖ teacher(· | c, x, y<t)): the training objective, measured on unseen prompts.
- `extra_nll`: on the teacher's own samples y ~ teacher(· | c, x), the mean over tokens of
  log teacher(y_t | c, x, y<t) − log model(y_t | x, y<t): how much less likely the model finds what the teacher says.
  It catches a model that never produces the teacher's behaviour (a sign-off it gives probability 1e-6), which the
  reverse KL on the model's own samples hardly sees.

Both are 0 for the teacher itself and grow as the model without the context drifts from it. The share of the gap
closed by training is `1 - student / base` (`closed`). The teacher's samples are drawn once and reused for every model
measured against the same teacher, so base and student are compared on the same answers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from opcd.config import RolloutConfig
from opcd.core.prompts import PromptPair
from opcd.core.rollout import HFSampler, autocast, device_of
from opcd.core.scoring import make_batch, pad_responses, response_logits
from opcd.core.teachers import Teacher

# (prompts, responses, context-prefix lengths) -> logits that predict each response token, [B, R, V]
LogitsFn = Callable[[list[list[int]], list[list[int]], list[int]], Tensor]
MICRO = 4  # rows per scoring pass
POSITIONS = 64  # response positions per fp32 log-softmax


@dataclass(frozen=True)
class Gap:
    reverse_kl: float  # nats/token on the model's own samples
    extra_nll: float  # nats/token on the teacher's samples
    own_tokens: int
    teacher_tokens: int

    @property
    def total(self) -> float:
        """Both directions together (a symmetric divergence): what checkpoint selection minimizes."""
        return self.reverse_kl + self.extra_nll

    def as_dict(self) -> dict:
        return asdict(self)


def closed(base: float, student: float) -> float | None:
    """The share of the base model's gap the student closed (1 = none left, < 0 = wider); None if there was none."""
    return None if base <= 0 else 1.0 - student / base


def token_terms(s_logits: Tensor, t_logits: Tensor, ids: Tensor, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """Per response token [B, R]: KL(model ‖ teacher) over the vocabulary, and log p_teacher(y) − log p_model(y).

    Vocabularies are compared over their common rows (a teacher may pad its head with rows no tokenizer emits)."""
    v = min(s_logits.shape[-1], t_logits.shape[-1])
    logp_s = torch.log_softmax(s_logits[..., :v].float() / temperature, -1)
    logp_t = torch.log_softmax(t_logits[..., :v].float() / temperature, -1)
    kl = (logp_s.exp() * (logp_s - logp_t)).sum(-1)
    extra = (logp_t - logp_s).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    return kl, extra


def _mean_term(
    model: LogitsFn, teacher: LogitsFn, pairs: list[PromptPair], responses: list[list[int]], which: int, temp: float
) -> tuple[float, int]:
    """The token mean of one `token_terms` term (0: KL, 1: extra NLL) over (pairs, responses), and the token count."""
    total, tokens = 0.0, 0
    for start in range(0, len(pairs), MICRO):
        rows, answers = pairs[start : start + MICRO], responses[start : start + MICRO]
        s = model([p.student_ids for p in rows], answers, [0] * len(rows))
        t = teacher([p.teacher_ids for p in rows], answers, [p.teacher_prefix for p in rows])
        ids, mask = (x.to(s.device) for x in pad_responses(answers))
        width, t = ids.shape[1], t.to(s.device)
        for a in range(0, width, POSITIONS):  # bounded fp32 copies: [MICRO, POSITIONS, V] at a time
            term = token_terms(s[:, a : a + POSITIONS], t[:, a : a + POSITIONS], ids[:, a : a + POSITIONS], temp)
            total += float((term[which] * mask[:, a : a + POSITIONS]).sum())
        tokens += int(mask.sum())
    return total / max(tokens, 1), tokens


def measure(
    model: LogitsFn,
    teacher: LogitsFn,
    pairs: list[PromptPair],
    own: list[list[int]],
    teacher_samples: list[list[int]],
    temperature: float = 1.0,
) -> Gap:
    """The gap of `model` (without the context) to `teacher` (with it): `own` are the model's samples for `pairs`,
    `teacher_samples` the teacher's."""
    kl, own_tokens = _mean_term(model, teacher, pairs, own, 0, temperature)
    extra, teacher_tokens = _mean_term(model, teacher, pairs, teacher_samples, 1, temperature)
    return Gap(kl, extra, own_tokens, teacher_tokens)


def model_logits(model, pad_id: int, dtype: str) -> LogitsFn:
    """A model's logits on (prompt, response) pairs, in eval mode, without gradients."""

    @torch.no_grad()
    def logits(prompts: list[list[int]], responses: list[list[int]], prefix_lens: list[int]) -> Tensor:
        was_training = model.training
        model.eval()
        try:
            with autocast(dtype, device_of(model)):
                return response_logits(model, make_batch(prompts, responses, pad_id))
        finally:
            model.train(was_training)

    return logits


def teacher_logits(teacher: Teacher, pad_id: int, dtype: str) -> LogitsFn:
    """A training run's teacher (its context prefix cache, its adapter switched off) as a `LogitsFn`."""
    return lambda prompts, responses, prefix_lens: teacher.head(
        teacher.hidden(prompts, responses, prefix_lens, pad_id, dtype), dtype
    )


class Probe:
    """The gap on fixed prompts, measured again and again (every `train.eval_every` steps): the teacher's samples
    are drawn on the first call and kept while the teacher does not change."""

    def __init__(self, pairs: list[PromptPair], rollout: RolloutConfig, seed: int):
        self.pairs, self.rollout, self.seed = pairs, rollout, seed
        self.teacher_samples: list[list[int]] | None = None
        self.own: list[list[int]] = []  # the model's answers of the last call

    def __call__(self, student, teacher: Teacher, eos: set[int], pad_id: int, dtype: str) -> Gap:
        own = [r for r, _ in HFSampler(student, self.rollout, eos, pad_id, dtype).generate(self._student(), self.seed)]
        self.own = own
        return measure(
            model_logits(student, pad_id, dtype),
            teacher_logits(teacher, pad_id, dtype),
            self.pairs,
            own,
            self.teacher_answers(teacher, eos, pad_id, dtype),
            self.rollout.temperature,
        )

    def teacher_answers(self, teacher: Teacher, eos: set[int], pad_id: int, dtype: str) -> list[list[int]]:
        """The teacher's samples: drawn on the first call, again only when the teacher changes."""
        if self.teacher_samples is None or not teacher.fixed:
            with teacher.active() as model:
                sampler = HFSampler(model, self.rollout, eos, pad_id, dtype, rows=teacher.rows)
                self.teacher_samples = [r for r, _ in sampler.generate(self._teacher(), self.seed + 1)]
        return self.teacher_samples

    def _student(self) -> list[list[int]]:
        return [p.student_ids for p in self.pairs]

    def _teacher(self) -> list[list[int]]:
        return [p.teacher_ids for p in self.pairs]
