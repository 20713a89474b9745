"""`opcd distill-prompt`: distill a system prompt into a model, then show what it changed.

One run of the pipeline (`opcd.recipes.pipeline`) with a prompt yardstick: the test split is a prompts file scored by
behaviour checkers or a task grader, with the context in the teacher's rendering or not at all; the optional
validation split (another prompts file, disjoint from training and test) chooses the checkpoint.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from opcd.config import Config, DataConfig, RolloutConfig
from opcd.core import models
from opcd.core.data import Example, check_disjoint, file_digest, load_examples, shared_context
from opcd.core.prompts import PromptRenderer
from opcd.core.rollout import RolloutSource
from opcd.errors import OpcdError
from opcd.evaluate import score
from opcd.recipes.pipeline import OOD_DEFAULT, distill_and_measure, preflight
from opcd.tasks import build_scorer, is_grader

# The CPU-sized training preset `opcd distill-prompt` starts from (without --config): measured on Qwen2.5-Coder-0.5B,
# 2 cores; docs/methods.md says why these values.
PRESET = [
    "loss.estimator=full",
    "rollout.max_new_tokens=32",
    "train.steps=20",
    "train.prompts_per_step=8",
    "train.micro_batch_size=8",
    "train.lr=1e-5",
    "train.warmup_steps=2",
    "train.save_every=10",
    "train.keep_checkpoints=0",
]


@dataclass(frozen=True)
class EvalPlan:
    """What to measure around a distillation run."""

    scorer: tuple[str, ...]  # checker specs (`language:fr`, ...) or one grader (`number`, `choice`, ...)
    test_prompts: str = "opcd:generic_eval"
    test_max: int = 24  # first N test prompts (0 = all)
    validation_prompts: str = ""  # select the checkpoint on these (never on the test prompts); "" = last checkpoint
    validation_max: int = 0
    rollout: RolloutConfig = RolloutConfig.greedy(48)
    ood: dict = field(default_factory=lambda: dict(OOD_DEFAULT))  # {} = no out-of-distribution suites
    keep_weights: bool = True  # False: delete the checkpoints after evaluation (sweeps on a small disk)
    base_cache: str = ""  # where base-model scores are kept ("" = shared for packaged models, else RUN/eval)


def _split(cfg: Config, prompts: str, max_prompts: int) -> DataConfig:
    return DataConfig(**{**asdict(cfg.data), "prompts": prompts, "max_prompts": max_prompts})


class PromptYardstick:
    """Adherence (checkers) or accuracy (a grader) on held-out prompts; the checkpoint on validation prompts."""

    last_rule = "last checkpoint (no validation split given)"

    def __init__(self, cfg: Config, plan: EvalPlan):
        self.cfg, self.plan = cfg, plan
        self.score_fn = build_scorer(list(plan.scorer))
        train_examples = load_examples(cfg.data)
        test = _split(cfg, plan.test_prompts, plan.test_max)
        self.held_out = load_examples(test)
        check_disjoint(train_examples, self.held_out, cfg.data.prompts, plan.test_prompts)
        self.validation_examples: list[Example] = []
        self.validation, self.validation_key = "", {}
        if plan.validation_prompts:
            data = _split(cfg, plan.validation_prompts, plan.validation_max)
            self.validation_examples = load_examples(data)
            check_disjoint(
                train_examples, self.validation_examples, cfg.data.prompts, plan.validation_prompts, "validation"
            )
            check_disjoint(
                self.validation_examples,
                self.held_out,
                plan.validation_prompts,
                plan.test_prompts,
                "test",
                "validation",
            )
            self.validation = f"validation '{plan.validation_prompts}' ({len(self.validation_examples)} prompts)"
            self.validation_key = {
                "dtype": cfg.model.dtype,
                "validation": asdict(data),
                "file": file_digest(plan.validation_prompts),
                "scorer": plan.scorer,
                "rollout": asdict(plan.rollout),
            }
        if is_grader(plan.scorer):
            missing = [e.source for e in self.held_out if e.answer is None]
            if missing:
                raise OpcdError(
                    f"{missing[0]}: grader '{plan.scorer[0]}' needs an 'answer' field on every test example"
                )
        self.renderer = PromptRenderer(models.load_tokenizer(cfg.model.student), cfg.data)
        self.metric = "accuracy" if is_grader(plan.scorer) else "adherence"
        self.scorer = list(plan.scorer)
        self.test = {"prompts": plan.test_prompts, "n": len(self.held_out)}
        self.key = {
            "model": cfg.model.student,
            "dtype": cfg.model.dtype,
            "data": asdict(test),
            "context": shared_context(cfg.data),
            "test_file": file_digest(plan.test_prompts),
            "scorer": plan.scorer,
            "rollout": asdict(plan.rollout),
        }

    def _score(self, model_path: str, examples: list[Example], with_context: bool, label: str) -> dict:
        model = models.load_model(model_path, self.cfg.model.dtype, self.cfg.model.device)
        result = score(
            model,
            self.renderer.tokenizer,
            self.renderer,
            examples,
            self.score_fn,
            with_context=with_context,
            rollout=self.plan.rollout,
            dtype=self.cfg.model.dtype,
            desc=f"eval {label}",
        )
        return result.summary()

    def measure(self, model_path: str, *, with_context: bool, label: str) -> dict:
        return self._score(model_path, self.held_out, with_context, label)

    def validate(self, model_path: str, label: str) -> float:
        return self._score(model_path, self.validation_examples, False, f"validation {label}")["rate"]

    def answers(self, base: dict, student: dict) -> list[tuple[str, str, str]]:
        return [
            (ex.messages[-1]["content"], before, after)
            for ex, before, after in zip(self.held_out, base["responses"], student["responses"], strict=False)
        ]


def distill_prompt(cfg: Config, plan: EvalPlan, *, source: RolloutSource | None = None, progress: bool = True) -> dict:
    """Evaluate, train, select, evaluate; returns (and writes) the results. Rerunning resumes."""
    preflight(cfg)
    return distill_and_measure(
        cfg,
        PromptYardstick(cfg, plan),  # every input is checked before the first (minutes-long) evaluation
        ood=plan.ood,
        keep_weights=plan.keep_weights,
        base_cache=plan.base_cache,
        source=source,
        progress=progress,
    )
