"""What a strided input to the vocabulary head costs sampling, side by side in one process.

Hugging Face's `generate` applies the head to the prompt's last position, a strided view of the hidden states. For
weights that need no gradient (a frozen teacher, LoRA's frozen base, a LoRA checkpoint loaded merged), torch's matmul
then does not fold the batch into one matrix product: it expands the whole head (151,936 × 896 for the 0.5B) once
per row. `HFSampler` hands the head a contiguous copy (`opcd/core/rollout.py`). This times `HFSampler.generate` on the
packaged Qwen2.5-Coder-0.5B, 8 training prompts × 32 greedy tokens (every row decodes all 32), with the pre-hook
removed (`strided`: what `generate` did before) and in place (`contiguous`), for the model in bf16 with frozen
weights and in fp32 with weights that need gradients (the full fine-tuning student, sampled under bf16 autocast), and
checks that both give the same tokens.

    .venv/bin/python benchmarks/sampling_head.py         # about 2 min

Writes `benchmarks/results/sampling_head.{md,json}`. Nothing else may run on the machine meanwhile.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from unittest import mock

from opcd.config import DataConfig, RolloutConfig
from opcd.core import rollout
from opcd.core.data import load_examples
from opcd.core.models import load_model, load_tokenizer
from opcd.core.rollout import HFSampler, eos_ids

RESULTS = Path(__file__).resolve().parent / "results"
MODEL = "qwen2.5-coder-0.5b-instruct"
REPEATS = 3


def timed(sampler: HFSampler, prompts: list[list[int]]) -> tuple[float, list]:
    times, answers = [], None
    for _ in range(REPEATS):
        began = time.perf_counter()
        answers = sampler.generate(prompts, seed=0)
        times.append(time.perf_counter() - began)
    return statistics.median(times), answers


def main() -> None:
    tokenizer = load_tokenizer(MODEL)
    examples = load_examples(DataConfig(prompts="opcd:generic_train"), require_context=False)[:8]
    texts = [tokenizer.apply_chat_template(e.messages, add_generation_prompt=True, tokenize=False) for e in examples]
    prompts = [tokenizer(text, add_special_tokens=False).input_ids for text in texts]
    greedy = RolloutConfig(temperature=0, max_new_tokens=32)
    rows = []
    for label, dtype, frozen in (
        ("bf16, frozen weights", "bf16", True),
        ("fp32, weights with gradients", "fp32", False),
    ):
        model = load_model(MODEL, dtype).requires_grad_(not frozen)
        sampler = HFSampler(model, greedy, eos_ids(tokenizer, model), tokenizer.pad_token_id, "bf16")
        sampler.config.min_new_tokens = 32  # every row decodes the same number of tokens
        with mock.patch.object(rollout, "_contiguous_input", lambda module, args: None):  # the hook does nothing
            strided, before = timed(sampler, prompts)
        contiguous, after = timed(sampler, prompts)
        rows.append({"model": label, "strided_s": strided, "contiguous_s": contiguous, "same_tokens": before == after})
        print(rows[-1], flush=True)
        del model, sampler
    lines = [
        f"`HFSampler.generate`, {MODEL}, 8 prompts × 32 greedy tokens, median of {REPEATS} (seconds).",
        "",
        "| model | strided head input | contiguous | ratio | same tokens |",
        "|---|---|---|---|---|",
        *(
            f"| {r['model']} | {r['strided_s']:.2f} | {r['contiguous_s']:.2f} | "
            f"{r['strided_s'] / r['contiguous_s']:.2f}× | {'yes' if r['same_tokens'] else 'no'} |"
            for r in rows
        ),
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sampling_head.json").write_text(json.dumps(rows, indent=1) + "\n")
    (RESULTS / "sampling_head.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
