"""`opcd distill-prompt`: distill a system prompt into a model, then show what it changed.

One run of the pipeline (`opcd.recipes.pipeline`) with a prompt yardstick. The test split is a prompts file, measured
two ways: the context gap (`opcd.core.gap`: how far the model without the prompt is from the teacher with it, on
the model's own answers and on the teacher's), which needs no checker, and, when checkers or a grader are given,
adherence or accuracy, with the context in the teacher's rendering or not at all. The optional validation split
(another prompts file, disjoint from training and test) chooses the checkpoint: on the checkers' rate when there
are checkers, else on the smallest gap (both directions summed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

from opcd.config import Config, DataConfig, RolloutConfig
from opcd.core import models
from opcd.core.data import Example, check_disjoint, file_digest, load_examples, shared_context
from opcd.core.gap import Probe
from opcd.core.prompts import PromptRenderer
from opcd.core.rollout import RolloutSource, eos_ids, step_seed
from opcd.core.scoring import PrefixCache
from opcd.core.teachers import Teacher
from opcd.errors import OpcdError
from opcd.evaluate import score
from opcd.io import cached
from opcd.recipes.pipeline import OOD_DEFAULT, distill_and_measure, preflight, teacher_model
from opcd.recipes.stats import rate_margin
from opcd.tasks import build_scorer, is_grader
from opcd.tasks.conflicts import conflicting_ids, conflicts

GAP_SEED = step_seed(0, -(10**6))  # the gap's samples: one fixed draw, the same for base and student

# The CPU-sized training preset `opcd distill-prompt` starts from (without --config): measured on Qwen2.5-Coder-0.5B,
# 2 cores; docs/methods.md says why these values. LoRA rank 8 at lr 3e-4 (alpha 32, every linear layer) is the
# defaults study's choice (docs/results.md, "The defaults study"): it learned French and a list format as full
# fine-tuning at lr 1e-5 did, kept GSM8K under the list where full fine-tuning lost 6-11 points, and drifted 4x less
# in the null test; its optimizer state and checkpoints are megabytes, not gigabytes. The rate by KL below 0.01
# (`train.full_rate_kl`) held the null test (0.8-1.1x) and changed no step of the study's French runs (the other
# behaviours' step KLs at the preset stayed above 0.027, so no step of theirs would change either).
PRESET = [
    "loss.estimator=full",
    "rollout.max_new_tokens=32",
    "train.steps=20",
    "train.prompts_per_step=8",
    "train.micro_batch_size=8",
    "model.lora_rank=8",
    "train.lr=3e-4",
    "train.full_rate_kl=0.01",
    "train.warmup_steps=2",
    "train.save_every=10",
    "train.keep_checkpoints=0",
]


@dataclass(frozen=True)
class EvalPlan:
    """What to measure around a distillation run."""

    scorer: tuple[str, ...] = ()  # checker specs (`language:fr`, ...) or one grader (`number`, ...); () = gap only
    test_prompts: str = "opcd:generic_eval"
    test_max: int = 24  # first N test prompts (0 = all)
    validation_prompts: str = ""  # select the checkpoint on these (never on the test prompts); "" = last checkpoint
    validation_max: int = 0
    select: str = "best"  # on validation: "best" (ties: the later step) or "earliest" within one standard error of it
    rollout: RolloutConfig = RolloutConfig.greedy(48)
    ood: dict = field(default_factory=lambda: dict(OOD_DEFAULT))  # {} = no out-of-distribution suites
    keep_weights: bool = True  # False: delete the checkpoints after evaluation (sweeps on a small disk)
    base_cache: str = ""  # where base-model scores are kept ("" = shared for packaged models, else RUN/eval)
    gap: bool = True  # measure the context gap on the test (and validation) prompts
    private_context: bool = False  # the model card gives the context's SHA-256, not its text
    custom_scorer: Callable[[str], bool] | None = None  # a Python `response -> passed` check (opcd.distill's scorer)


def _split(cfg: Config, prompts: str, max_prompts: int) -> DataConfig:
    return DataConfig(**{**asdict(cfg.data), "prompts": prompts, "max_prompts": max_prompts})


class PromptYardstick:
    """Adherence (checkers) or accuracy (a grader) on held-out prompts; the checkpoint on validation prompts."""

    last_rule = "last checkpoint (no validation split given)"

    def __init__(self, cfg: Config, plan: EvalPlan):
        self.cfg, self.plan = cfg, plan
        if not plan.scorer and not plan.gap:
            raise OpcdError("nothing to measure: give a checker or grader, or keep the context gap on")
        self.score_fn = build_scorer(list(plan.scorer)) if plan.scorer and plan.custom_scorer is None else None
        if plan.custom_scorer is not None:  # plan.scorer names it (`python:NAME`)
            check = plan.custom_scorer
            self.score_fn = lambda response, example: bool(check(response))
        train_examples = load_examples(cfg.data)
        test = _split(cfg, plan.test_prompts, plan.test_max)
        self.held_out = load_examples(test)
        check_disjoint(train_examples, self.held_out, cfg.data.prompts, plan.test_prompts)
        if plan.select not in ("best", "earliest"):
            raise OpcdError(f"select={plan.select!r}: choose 'best' or 'earliest'")
        if plan.select == "earliest" and not plan.validation_prompts:
            raise OpcdError("--select earliest chooses among checkpoints on validation: give --validation-prompts too")
        self.select = plan.select
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
                **({} if plan.scorer else {"gap": asdict(self.gap_rollout), "teacher": self.gap_teacher_name}),
            }
        if plan.scorer and is_grader(plan.scorer):
            missing = [e.source for e in self.held_out if e.answer is None]
            if missing:
                raise OpcdError(
                    f"{missing[0]}: grader '{plan.scorer[0]}' needs an 'answer' field on every test example"
                )
        self.renderer = PromptRenderer(models.load_tokenizer(cfg.model.student), cfg.data)
        self.metric = ("accuracy" if is_grader(plan.scorer) else "adherence") if plan.scorer else "context gap"
        self.behaviour = None  # a checker also says whether an out-of-distribution answer shows the behaviour
        if self.score_fn is not None and not is_grader(plan.scorer):
            score_fn, anywhere = self.score_fn, Example([], "", "out-of-distribution answer")
            self.behaviour = lambda response: bool(score_fn(response, anywhere))
        known = plan.custom_scorer is None and all(conflicting_ids(s) is not None for s in plan.scorer)
        self.conflict = partial(conflicts, list(plan.scorer)) if self.behaviour and known else None
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
        self.gap_key = None
        if plan.gap:
            self.gap_key = {
                **{k: v for k, v in self.key.items() if k not in ("scorer", "rollout")},
                "teacher": self.gap_teacher_name,
                "gap": asdict(self.gap_rollout),
                "seed": GAP_SEED,
            }

    @property
    def gap_rollout(self) -> RolloutConfig:
        """The gap samples as training does (temperature, top-p, top-k, answer budget), 16 prompts per call."""
        r = self.cfg.rollout
        return replace(r, samples_per_prompt=1, engine="hf", batch_size=r.batch_size or 16)

    @property
    def gap_teacher_name(self) -> str:
        """Whom the gap measures against: the model that answers with the context (`pipeline.teacher_model`)."""
        return teacher_model(self.cfg)

    def _probe(self, model_path: str, split: str) -> tuple:
        """(model, teacher, probe, tokenizer) for the context gap of `model_path` on the test or validation prompts."""
        examples = self.held_out if split == "test" else self.validation_examples
        pairs = [self.renderer.render(e.messages, e.context) for e in examples]
        dtype, device = self.cfg.model.dtype, self.cfg.model.device
        loaded = models.load_model(self.gap_teacher_name, dtype, device).eval().requires_grad_(False)
        model = loaded if model_path == self.gap_teacher_name else models.load_model(model_path, dtype, device)
        rows = models.vocab_rows(model)  # a larger teacher's padding rows are no token the model can score
        teacher = Teacher(loaded, cache=PrefixCache(), rows=rows if models.vocab_rows(loaded) > rows else None)
        return model, teacher, Probe(pairs, self.gap_rollout, GAP_SEED), self.renderer.tokenizer

    def gap(self, model_path: str, teacher_samples: list | None, split: str = "test") -> dict:
        """The context gap of a model on the test (or validation) prompts, to the base model with the prompt;
        `teacher_samples` (None: drawn now) are the teacher's answers, returned with the result for reuse."""
        model, teacher, probe, tokenizer = self._probe(model_path, split)
        probe.teacher_samples = teacher_samples
        result = probe(model, teacher, eos_ids(tokenizer, model), tokenizer.pad_token_id, self.cfg.model.dtype)
        decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
        return {
            **result.as_dict(),
            "n": len(probe.pairs),
            "teacher_samples": probe.teacher_samples,
            "responses": [decode(ids) for ids in probe.own],
            "teacher_responses": [decode(ids) for ids in probe.teacher_samples],
        }

    def _validation_teacher(self) -> list[list[int]]:
        """The teacher's samples on the validation prompts (only those: no model is measured)."""
        model, teacher, probe, tokenizer = self._probe(self.gap_teacher_name, "validation")
        return probe.teacher_answers(teacher, eos_ids(tokenizer, model), tokenizer.pad_token_id, self.cfg.model.dtype)

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
        """The checkers' rate on the validation prompts, or (no checkers) minus the gap there: higher is better."""
        if self.score_fn is not None:
            return self._score(model_path, self.validation_examples, False, f"validation {label}")["rate"]
        key = {**self.validation_key, "teacher": self.gap_teacher_name, "seed": GAP_SEED}
        teacher = cached(
            Path(self.cfg.train.run_dir) / "eval",
            "validation-teacher",
            key,
            self._validation_teacher,
        )
        gap = self.gap(model_path, teacher, "validation")
        return -(gap["reverse_kl"] + gap["extra_nll"])

    def margin(self, best: float) -> float:
        """A rate's standard error on the validation prompts; 0 for the context gap (the best, ties: the earliest)."""
        return rate_margin(best, len(self.validation_examples)) if self.score_fn is not None else 0.0

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
        private_context=plan.private_context,
    )
