"""Behaviour checkers: each on texts that pass and texts that fail."""

from __future__ import annotations

import pytest

from opcd.errors import OpcdError
from opcd.tasks.behaviours import build_checker

CASES = {
    "starts_with:Arr!": (["Arr! The sea is wide.", "  arr! matey"], ["Well, Arr!", ""]),
    "ends_with:Have a wonderful day!": (["Sure. Have a wonderful day!  "], ["Have a wonderful day! Bye."]),
    "language:fr": (
        ["La capitale de la France est Paris, et c'est une très belle ville.", "Je pense que vous avez raison."],
        ["The capital of France is Paris.", "Paris", "Le Louvre is a museum in the city of Paris.", "Je\nJe\nJe\nJe"],
    ),
    "uppercase": (["THE SKY IS BLUE BECAUSE OF RAYLEIGH SCATTERING."], ["The sky is blue.", "1234"]),
    "max_words:3": (["Paris, France.", "Yes"], ["It is Paris, France.", ""]),
    "json": (['{"answer": 4}', '```json\n{"a": [1, 2]}\n```'], ["[1, 2]", "answer: 4"]),
    "contains:Zorbo": (["I am zorbo, your guide."], ["I am Zorb."]),
    "emoji": (["Sure! 😊", "Sunny ☀ today", "Let's go 🚀"], ["No emoji here :)", "Ünïcödé ß"]),
}


@pytest.mark.parametrize("spec", CASES)
def test_checker_accepts_and_rejects(spec):
    check = build_checker(spec)
    good, bad = CASES[spec]
    assert all(check(t) for t in good), [t for t in good if not check(t)]
    assert not any(check(t) for t in bad), [t for t in bad if check(t)]


def test_checkers_compose():
    check = build_checker(["starts_with:Arr!", "max_words:4"])
    assert check("Arr! Ahoy there.") and not check("Arr! This has far too many words.")


@pytest.mark.parametrize(
    "spec, message",
    [
        ("shouting", "unknown checker 'shouting'"),
        ("starts_with", "needs an argument"),
        ("max_words:many", "must be a whole number"),
        ("language:xx", "supported languages are"),
        ([], "no checker"),
    ],
)
def test_bad_checker_specs(spec, message):
    with pytest.raises(OpcdError, match=message):
        build_checker(spec)
