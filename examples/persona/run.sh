#!/usr/bin/env bash
# The practitioner's path on the packaged 0.5B model, from a clean clone (docs/results.md, "your own persona"):
# a parquet of 232 training prompts (24 validation, 24 test), a persona no checker can score, distill-prompt without
# --check, export, and the exported model answering without a system prompt through plain transformers. MODE=lora
# does the same through LoRA and `opcd export --merge-lora`. Writes under runs/$RUN and models/$RUN (default RUN:
# persona-$MODE); arguments go to distill-prompt (e.g. --no-ood, loss.teacher_share=0.5).
set -euo pipefail
cd "$(dirname "$0")/../.."
mode=${MODE:-full}
bash scripts/setup.sh
py=.venv/bin/python
mkdir -p runs
# 1. prompts: the bundled generic sets as parquet (train: 200 + 32 = 232 prompts; validation and test: 24 others each)
$py - <<'PY'
import datasets
rows = lambda name: [r["prompt"] for r in datasets.load_dataset("json", data_files=f"opcd/assets/prompts/{name}.jsonl")["train"]]
evals = rows("generic_eval")
datasets.Dataset.from_dict({"question": rows("generic_train") + evals[48:]}).to_parquet("runs/persona-prompts.parquet")
datasets.Dataset.from_dict({"question": evals[24:48]}).to_parquet("runs/persona-validation.parquet")
datasets.Dataset.from_dict({"question": evals[:24]}).to_parquet("runs/persona-test.parquet")
PY
opts=() extra=(model.lora_rank=0 train.lr=1e-5)  # full fine-tuning at lr 1e-5, as measured (the preset is now LoRA)
# LoRA: rank 16 at lr 1e-4 with a cosine decay, and mixed rollouts (the teacher answers half of step 1's prompts, a
# share falling to 0 by the last step): without them this LoRA student did not take the persona up (docs/results.md)
[ "$mode" = lora ] && opts=(--no-ood) extra=(model.lora_rank=16 model.lora_alpha=32 train.lr=1e-4
    train.lr_schedule=cosine loss.teacher_share=0.5)
# 2. distill, with no checker: the context gap is the measure
.venv/bin/opcd distill-prompt --system-prompt-file examples/persona/persona.txt \
    --prompts runs/persona-prompts.parquet --test-prompts runs/persona-test.parquet \
    --validation-prompts runs/persona-validation.parquet \
    --run-dir "runs/${RUN:-persona-$mode}" "${opts[@]}" "$@" data.prompt_column=question "${extra[@]}"
# 3. export (merged for LoRA) and call the model with plain transformers, no system prompt
rm -rf "models/${RUN:-persona-$mode}"
.venv/bin/opcd export "runs/${RUN:-persona-$mode}" --out "models/${RUN:-persona-$mode}" $([ "$mode" = lora ] && echo --merge-lora)
$py - "models/${RUN:-persona-$mode}" <<'PY'
import sys
from transformers import AutoModelForCausalLM, AutoTokenizer
path = sys.argv[1]
model, tok = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
for q in ["What is a CPU?", "How do I reverse a list in Python?", "Why is the sky blue?"]:
    ids = tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=48, do_sample=False)
    print(f"> {q}\n{tok.decode(out[0][ids['input_ids'].shape[1]:], skip_special_tokens=True)}\n")
PY
