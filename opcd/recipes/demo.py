"""`opcd demo`: distill a system prompt into the default model on this CPU and show the effect.

A fixed `opcd distill-prompt` run at its preset: "answer in French" into Qwen2.5-Coder-0.5B-Instruct with OPCD (LoRA
rank 8, 20 steps of 8 prompts), scored on 24 held-out prompts for the base model without and with the prompt and
for the student without it, plus the instruction-following suite for the base, the in-context teacher and the
student. GSM8K is left out of the demo: in French it measures mostly the behaviour's own cost (docs/methods.md,
"Retention"), and its 100 held-out problems (answers of up to 256 tokens) would be asked of three models more;
`opcd distill-prompt` asks it by default.
The demo checkpoints once, after its last step; re-running a finished demo with the same run directory reuses it
rather than starting over.
"""

from __future__ import annotations

from opcd.config import load_config
from opcd.recipes.pipeline import OOD_DEFAULT
from opcd.recipes.system_prompt import PRESET, EvalPlan, distill_prompt

SYSTEM_PROMPT = "Always answer in French, whatever language the question is in."
CHECKER = "language:fr"


def run_demo(run_dir: str, overrides: list[str]) -> dict:
    cfg = load_config(
        None,
        [
            *PRESET,
            "model.student=qwen2.5-coder-0.5b-instruct",
            "data.prompts=opcd:generic_train",
            f"data.context={SYSTEM_PROMPT}",
            "train.save_every=0",
            "train.keep_checkpoints=1",
            f"train.run_dir={run_dir}",
            *overrides,
        ],
    )
    ood = {"instructions": OOD_DEFAULT["instructions"]}
    return distill_prompt(cfg, EvalPlan(scorer=(CHECKER,), gap=False, ood=ood))
