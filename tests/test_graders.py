"""Task graders and the out-of-distribution suites' checkers, on hand-written responses."""

from __future__ import annotations

import json

import pytest

from opcd.core.data import BUNDLED, Example
from opcd.errors import OpcdError
from opcd.tasks import build_scorer
from opcd.tasks.graders import choice, math, number, tagged_answer, yes_no
from opcd.tasks.ood import gsm8k_correct, gsm8k_items, instruction_following, instruction_items


def test_the_last_answer_tag_counts():
    assert tagged_answer("<answer>A</answer> no wait <answer> C </answer>") == "C"
    assert tagged_answer("no tags") is None


@pytest.mark.parametrize(
    ("response", "answer", "ok"),
    [
        ("2 x 4 = 8\n<answer>8</answer>", "8", True),
        ("<answer>1,024</answer>", "1024", True),
        ("So the total is 26 legs.", "26", True),  # no tag: the last number
        ("<answer>26</answer> but maybe 30", "26", True),  # the tag wins over later numbers
        ("<answer>7</answer>", "8", False),
        ("no number here", "8", False),
    ],
)
def test_number(response, answer, ok):
    assert number(response, answer) is ok


def test_choice_and_yes_no_need_the_tag():
    assert choice("Reasoning... <answer>(b)</answer>", "B")
    assert choice("<answer>C. Paris</answer>", "C")
    assert not choice("The answer is B", "B")
    assert yes_no("<answer>Yes.</answer>", "yes") and not yes_no("<answer>no</answer>", "yes")


def test_math_verify_equivalence():
    assert math("<answer>\\frac{1}{2}</answer>", "0.5")
    assert math("so x = 1/2", "\\frac{1}{2}")
    assert not math("<answer>3</answer>", "2")


def test_scorer_uses_the_example_answer_and_names_a_missing_one():
    grade = build_scorer("number")
    assert grade("<answer>4</answer>", Example([], "c", "f:1", "4"))
    with pytest.raises(OpcdError, match="f:2: grader 'number' needs an 'answer'"):
        grade("4", Example([], "c", "f:2"))
    with pytest.raises(OpcdError, match="used alone"):
        build_scorer(["number", "uppercase"])
    check = build_scorer(["starts_with:Arr", "max_words:3"])
    assert check("Arr matey", Example([], "c", "f:1")) and not check("Arr one two three", Example([], "c", "f:1"))


def test_instruction_following_uses_ifeval_checkers():
    items = instruction_items()
    assert len(items) == 120 and len({i.prompt for i in items}) == 120
    fewer_than_40 = items[0]
    assert instruction_following(fewer_than_40, "The sun rises gold over calm water.")
    assert not instruction_following(fewer_than_40, "word " * 50)
    bullets = items[2]
    assert instruction_following(bullets, "* one\n* two\n* three") and not instruction_following(bullets, "* one")
    assert not instruction_following(bullets, "")


def test_gsm8k_block_is_fixed_held_out_and_graded_on_the_last_number():
    first = gsm8k_items(3)
    assert [i.answer for i in first] == [i.answer for i in gsm8k_items(3)] == ["1", "2", "8"]
    assert first[0].prompt.startswith("Doctor Jones is scheduling his time for Monday.")
    assert gsm8k_correct(first[0], "9 - 3 - 5 = 1 hour") and not gsm8k_correct(first[0], "= 20")
    block = gsm8k_items(0)
    assert len(block) == 319
    openings = {item.prompt[:40] for item in block}
    bundled = [json.loads(line) for path in BUNDLED.glob("*.jsonl") for line in path.read_text().splitlines()]
    assert len(bundled) > 900 and not [r for r in bundled if r.get("prompt", "")[:40] in openings]  # no split asks them
    with pytest.raises(OpcdError, match="--gsm8k 400: the held-out GSM8K block has 319 problems"):
        gsm8k_items(400)


def test_grader_specs_and_choice_references_are_checked():
    with pytest.raises(OpcdError, match="takes no argument"):
        build_scorer("number:5")
    assert choice("<answer>B</answer>", "B. Paris") and choice("<answer>b)</answer>", "(B)")
    with pytest.raises(OpcdError, match="does not start with an option letter"):
        choice("<answer>B</answer>", "42")


def test_instruction_prompts_61_to_120():
    items, first = instruction_items(), instruction_items(60)
    assert len(items) == 120 and first == items[:60]
    assert first[0].prompt == "Describe a sunrise over the sea in fewer than 40 words."
    assert first[59].prompt == 'Tell me about elephants. Include the keywords "trunk" and "herd" in the response.'
    hike = items[63]  # a title and exactly 3 bullets
    assert instruction_following(hike, "<<Day Hike>>\n* A map\n* A rain jacket\n* Water")
    assert not instruction_following(hike, "Day Hike\n* A map\n* A rain jacket\n* Water")
    note = items[66]  # 2 placeholders and a P.S.
    assert instruction_following(note, "Dear [name], the heater in flat [number] is broken.\nP.S. I am home after six.")
    assert not instruction_following(note, "Dear [name], the heater in flat [number] is broken.")
    garden = items[103]  # no "flower(s)", "bloom(s)", "blooming"
    assert instruction_following(garden, "Buds open and bees hum between the tulips.")
    assert not instruction_following(garden, "Tulips are blooming and bees hum between them.")
    lemonade = items[105]  # "lemonade" at least twice
    assert instruction_following(lemonade, "Fresh lemonade! Our lemonade costs one dollar.")
    assert not instruction_following(lemonade, "Fresh lemonade! Only one dollar a cup.")
    spider = items[112]  # repeat the request first
    assert instruction_following(spider, "How many legs does a spider have? Eight.")
    assert not instruction_following(spider, "A spider has eight legs.")
    city = items[118]  # 2 paragraphs, the second starting with "However"
    assert instruction_following(city, "Cities have many jobs.\n\nHowever, they are noisy.")
    assert not instruction_following(city, "Cities have many jobs. However, they are noisy.")
