"""Regenerate the bundled `opcd:legs_*` prompt sets (leg counting, from reasoning-gym's seeded generator).

    pip install reasoning-gym==0.1.25 && python scripts/make_legs_data.py

Two or three kinds of animals, 1-6 of each; splits are disjoint by question text. The files are committed, so
opcd itself does not depend on reasoning-gym.
"""

from __future__ import annotations

import json
from pathlib import Path

import reasoning_gym

OUT = Path(__file__).resolve().parent.parent / "opcd" / "assets" / "prompts"
SPLITS = {"legs_train": 200, "legs_val": 40, "legs_test": 60}


def main() -> None:
    # one seeded stream, cut into splits (item i of seed s is item i-1 of seed s+1, so seeds do not separate splits)
    data = iter(
        reasoning_gym.create_dataset("leg_counting", seed=11, size=2000, min_animals=2, max_animals=3, max_instances=6)
    )
    seen: set[str] = set()
    for name, size in SPLITS.items():
        rows = []
        for item in data:
            question = item["question"].split("Now, ")[1].strip()
            question = question[0].upper() + question[1:]
            if question in seen:
                continue
            seen.add(question)
            rows.append({"prompt": question, "answer": str(item["answer"])})
            if len(rows) == size:
                break
        (OUT / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(name, len(rows))


if __name__ == "__main__":
    main()
