"""Behaviour checkers: each on texts that pass and texts that fail."""

from __future__ import annotations

import re

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
    # any language langdetect knows, beyond the stop-word checkers
    "language:it": (
        ["La capitale della Francia è Parigi, una città molto bella e antica."],
        ["The capital of France is Paris, a very old and beautiful city.", "", "1234"],
    ),
    "language:en": (["The capital of France is Paris, a very old and beautiful city."], ["Je pense que oui, merci."]),
    # one IF-Eval instruction, strict: the registry of if-verifiable
    'ifeval:detectable_format:number_bullet_lists:{"num_bullets": 2}': (
        ["Two points:\n* first\n* second"],
        ["Three points:\n* a\n* b\n* c", "No list at all."],
    ),
    "ifeval:punctuation:no_comma": (["No commas here."], ["Yes, there is one."]),
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
        ([], "no checker"),
    ],
)
def test_bad_checker_specs(spec, message):
    with pytest.raises(OpcdError, match=message):
        build_checker(spec)


@pytest.mark.parametrize(
    "spec, says",
    [
        ("ifeval:keywords:nonsense", "unknown instruction id"),
        ("ifeval:keywords:existence", "needs kwargs ['keywords']"),  # IF-Eval would draw random keywords
        ("ifeval:keywords:existence:{keywords: [a]}", "not JSON"),
        ('ifeval:keywords:existence:["a"]', "must be a JSON object"),
        ("language:xx", "langdetect knows"),
        ("ifeval", "needs an argument"),
    ],
)
def test_bad_ifeval_and_language_specs_fail_with_one_line(spec, says):
    with pytest.raises(OpcdError, match=re.escape(says)):
        build_checker(spec)
