"""Evaluation: how often a model's responses pass a checker or grader, with or without the context in its prompt.

Without the context, a prompt is the plain chat template over the user's own messages (how a distilled model is
called); with it, the teacher's rendering. Sampling settings default to the paper's evaluation (T = 1.0, top-p 0.95,
top-k 20); greedy decoding (temperature 0) is available for small, low-variance checks. The out-of-distribution
suites (`opcd.tasks.ood`) are always asked without any context.
"""

from __future__ import annotations

from dataclasses import dataclass

from tqdm.auto import tqdm

from opcd.config import DataConfig, RolloutConfig
from opcd.core import models
from opcd.core.data import Example, load_examples
from opcd.core.packing import packed_linears
from opcd.core.prompts import PromptRenderer
from opcd.core.rollout import HFSampler
from opcd.tasks import Scorer, build_scorer
from opcd.tasks.ood import SUITES

PAPER_EVAL = RolloutConfig(temperature=1.0, top_p=0.95, top_k=20, max_new_tokens=512)
GENERATION_BATCH = 32  # prompts per `generate` call when the rollout config does not say


@dataclass
class EvalResult:
    rate: float  # fraction of responses that pass
    responses: list[str]
    passed: list[bool]
    finished: list[bool]  # ended with EOS (False: cut at the token budget, often why a response fails)

    def summary(self) -> dict:
        truncated = 1 - sum(self.finished) / max(len(self.finished), 1)
        return {
            "rate": self.rate,
            "n": len(self.passed),
            "truncated": truncated,
            "passed": self.passed,
            "responses": self.responses,
        }


def respond(
    model,
    tokenizer,
    prompts: list[list[int]],
    rollout: RolloutConfig,
    dtype: str,
    seed: int = 0,
    desc: str | None = None,
) -> tuple[list[str], list[bool]]:
    """Decoded responses and whether each ended with EOS, generated in batches (a progress bar with `desc`)."""
    size = rollout.batch_size or GENERATION_BATCH
    sampler = HFSampler.for_model(model, tokenizer, rollout, dtype)
    texts: list[str] = []
    finished: list[bool] = []
    starts = range(0, len(prompts), size)
    with packed_linears(model, rows=size):  # the weights packed once for every batch, not once a batch
        for n, start in enumerate(tqdm(starts, desc=desc, unit="batch", disable=desc is None, leave=False)):
            for ids, done in sampler.generate(prompts[start : start + size], seed + n):
                texts.append(tokenizer.decode(ids, skip_special_tokens=True))
                finished.append(done)
    return texts, finished


def _result(passed: list[bool], responses: list[str], finished: list[bool]) -> EvalResult:
    return EvalResult(sum(passed) / max(len(passed), 1), responses, passed, finished)


def score(
    model,
    tokenizer,
    renderer: PromptRenderer,
    examples: list[Example],
    scorer: Scorer,
    *,
    with_context: bool,
    rollout: RolloutConfig = PAPER_EVAL,
    dtype: str = "bf16",
    seed: int = 0,
    desc: str | None = None,
) -> EvalResult:
    """Adherence (checkers) or accuracy (graders) on `examples`."""
    if with_context:
        prompts = [renderer.render(e.messages, e.context).teacher_ids for e in examples]
    else:
        prompts = [renderer.student_ids(e.messages) for e in examples]
    responses, finished = respond(model, tokenizer, prompts, rollout, dtype, seed, desc)
    return _result([scorer(r, e) for r, e in zip(responses, examples, strict=True)], responses, finished)


def out_of_distribution(
    model,
    tokenizer,
    renderer: PromptRenderer,
    suites: dict[str, tuple[int, RolloutConfig]],
    *,
    dtype: str = "bf16",
    seed: int = 0,
    progress: bool = True,
    context: str = "",
) -> dict[str, EvalResult]:
    """`{"instructions": (60, rollout), "gsm8k": (30, rollout)}` -> one result per suite (n = 0: all items); with a
    `context`, each prompt is asked as the teacher is (the context placed as `data.placement` says)."""
    results = {}
    for name, (n, rollout) in suites.items():
        load, check = SUITES[name]
        items = load(n)
        asked = [[{"role": "user", "content": item.prompt}] for item in items]
        if context:
            prompts = [renderer.render(messages, context).teacher_ids for messages in asked]
        else:
            prompts = [renderer.student_ids(messages) for messages in asked]
        desc = f"ood {name}{' with the prompt' if context else ''}" if progress else None
        responses, finished = respond(model, tokenizer, prompts, rollout, dtype, seed, desc)
        results[name] = _result([check(i, r) for i, r in zip(items, responses, strict=True)], responses, finished)
    return results


def run_eval(
    model_name: str,
    data: DataConfig,
    scorer_specs: tuple[str, ...],
    side: str,
    rollout: RolloutConfig,
    ood: dict,
    seed: int = 0,
    dtype: str = "bf16",
) -> dict:
    """`opcd eval`: the model's rate on `data` without and/or with its context, plus the OOD suites."""
    scorer = build_scorer(list(scorer_specs))
    examples = load_examples(data, require_context=side != "without")
    tokenizer = models.load_tokenizer(model_name)
    renderer = PromptRenderer(tokenizer, data)
    model = models.load_model(model_name, dtype, "auto")
    out: dict = {"model": model_name, "prompts": data.prompts, "n": len(examples), "rollout": rollout.__dict__}
    summary = {}
    for with_context in {"without": [False], "with": [True], "both": [False, True]}[side]:
        name = "with context" if with_context else "without context"
        result = score(
            model,
            tokenizer,
            renderer,
            examples,
            scorer,
            with_context=with_context,
            rollout=rollout,
            dtype=dtype,
            seed=seed,
            desc=name,
        )
        out[name], summary[name] = result.summary(), result.rate
    for name, result in out_of_distribution(model, tokenizer, renderer, ood, dtype=dtype, seed=seed).items():
        out[f"ood {name}"], summary[f"OOD {name} (n={len(result.passed)})"] = result.summary(), result.rate
    out["summary"] = summary
    return out
