"""What a training run measures besides its loss, on rank 0, between steps.

- every `train.eval_every` steps: the context gap (`opcd.core.gap`) on the held-out `train.eval_prompts`, logged as
  `gap/reverse_kl` and `gap/extra_nll`;
- every `train.log_samples_every` steps: the student's and the teacher's answers to the step's first prompts, side by
  side (`samples.jsonl` and the trackers' tables).

Both sample with their own seeds; the next step reseeds, so neither changes what training draws.
"""

from __future__ import annotations

from dataclasses import asdict

from opcd.config import Config, DataConfig
from opcd.core.data import check_disjoint, load_examples
from opcd.core.gap import Probe
from opcd.core.prompts import PromptRenderer
from opcd.core.rollout import HFSampler, Rollout, step_seed

SAMPLES = 4  # prompts per logged sample table


class Watch:
    def __init__(self, cfg: Config, tokenizer, training_examples: list | None):
        self.cfg = cfg
        t = cfg.train
        self.probe = None
        if t.eval_every:
            data = DataConfig(**{**asdict(cfg.data), "prompts": t.eval_prompts, "max_prompts": t.eval_max_prompts})
            examples = load_examples(data)
            if training_examples is not None:
                check_disjoint(training_examples, examples, cfg.data.prompts, t.eval_prompts, "gap evaluation")
            renderer = PromptRenderer(tokenizer, data)
            pairs = [renderer.render(e.messages, e.context) for e in examples]
            self.probe = Probe(pairs, cfg.rollout, step_seed(t.seed, -(10**6)))

    def metrics(self, run, step: int) -> dict[str, float]:
        """The gap on the held-out prompts at this step ({} when it is not measured now)."""
        every = self.cfg.train.eval_every
        if self.probe is None or step % every:
            return {}
        gap = self.probe(run.student, run.teacher, run.eos, run.tokenizer.pad_token_id, self.cfg.model.dtype)
        return {"gap/reverse_kl": gap.reverse_kl, "gap/extra_nll": gap.extra_nll}

    def samples(self, run, step: int, rollouts: list[Rollout]) -> list[tuple[str, str, str]]:
        """(prompt, student answer, teacher answer) for the step's first prompts ([] when none are logged now)."""
        every = self.cfg.train.log_samples_every
        if not every or step % every or not rollouts:
            return []
        chosen = rollouts[:SAMPLES]
        seed, tok = step_seed(self.cfg.train.seed, -step), run.tokenizer
        pad, dtype = tok.pad_token_id, self.cfg.model.dtype
        student = HFSampler(run.student, self.cfg.rollout, run.eos, pad, dtype)
        own = student.generate([r.student_prompt for r in chosen], seed)
        with run.teacher.active() as model:
            teacher = HFSampler(model, self.cfg.rollout, run.eos, pad, dtype, rows=run.teacher.rows)
            theirs = teacher.generate([r.teacher_prompt for r in chosen], seed + 1)
        examples = getattr(run.source, "examples", None)
        return [
            (
                examples[r.example].messages[-1]["content"] if examples else tok.decode(r.student_prompt),
                tok.decode(s, skip_special_tokens=True),
                tok.decode(t, skip_special_tokens=True),
            )
            for r, (s, _), (t, _) in zip(chosen, own, theirs, strict=True)
        ]
