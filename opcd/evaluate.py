"""Evaluation: how often a model's responses pass a checker, with or without the context in its prompt.

The student side is the plain chat template over the user's own messages (how a distilled model is called); the
context side is the teacher's rendering. Sampling settings default to the paper's evaluation (T = 1.0, top-p 0.95,
top-k 20); greedy decoding (temperature 0) is available for small, low-variance checks.
"""

from __future__ import annotations

from dataclasses import dataclass

from opcd.config import RolloutConfig
from opcd.data import Example
from opcd.prompts import PromptRenderer
from opcd.rollout import HFSampler
from opcd.tasks.behaviours import Checker

PAPER_EVAL = RolloutConfig(temperature=1.0, top_p=0.95, top_k=20, max_new_tokens=512)


@dataclass
class EvalResult:
    rate: float  # fraction of responses that pass the checker
    responses: list[str]
    passed: list[bool]


def respond(model, tokenizer, prompts: list[list[int]], rollout: RolloutConfig, dtype: str, seed: int = 0) -> list[str]:
    eos = {tokenizer.eos_token_id}
    sampler = HFSampler(model, rollout, eos, tokenizer.pad_token_id, dtype)
    return [tokenizer.decode(ids, skip_special_tokens=True) for ids, _ in sampler.generate(prompts, seed)]


def adherence(
    model,
    tokenizer,
    renderer: PromptRenderer,
    examples: list[Example],
    checker: Checker,
    *,
    with_context: bool,
    rollout: RolloutConfig = PAPER_EVAL,
    dtype: str = "bf16",
    seed: int = 0,
) -> EvalResult:
    pairs = [renderer.render(e.messages, e.context) for e in examples]
    prompts = [p.teacher_ids if with_context else p.student_ids for p in pairs]
    responses = respond(model, tokenizer, prompts, rollout, dtype, seed)
    passed = [checker(r) for r in responses]
    return EvalResult(sum(passed) / len(passed), responses, passed)
