"""The documentation tells the truth about the code: every config key is documented, every Python example imports what
it names from where it says and builds a config its stage accepts, every result file the docs cite exists (and no
other is kept), and the README stays a page a user reads."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest

from opcd.config import Config, load_config, validate
from opcd.recipes.consolidate import Plan, check_plan
from opcd.recipes.system_prompt import PRESET

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _python_blocks() -> list[tuple[str, str]]:
    return [
        (path.name, block)
        for path in DOCS
        for block in re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)
    ]


def test_the_configuration_reference_documents_every_key():
    reference = (ROOT / "docs" / "configuration.md").read_text()
    for section in dataclasses.fields(Config):
        assert f"**[{section.name}]**" in reference
        for key in dataclasses.fields(section.default_factory()):
            assert f"`{key.name}`" in reference, f"docs/configuration.md misses {section.name}.{key.name}"


@pytest.mark.parametrize("where, block", _python_blocks(), ids=lambda v: v if v.endswith(".md") else "")
def test_every_python_example_imports_what_it_names(where, block):
    """The public names the docs use import from the places the docs give."""
    imports = [node for node in ast.parse(block).body if isinstance(node, ast.Import | ast.ImportFrom)]
    for node in imports:
        exec(compile(ast.Module([node], type_ignores=[]), where, "exec"), {})


def test_the_readme_python_examples_build_valid_configs():
    """Every `cfg = load_config(...)` in the docs' Python blocks passes the checks its stage starts with (`train`,
    or `consolidate` for an experience config), so the example a user pastes gets as far as loading the model."""
    calls = [
        node.value
        for _, block in _python_blocks()
        for node in ast.walk(ast.parse(block))
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
        if getattr(node.value.func, "id", "") == "load_config"
    ]
    assert len(calls) >= 3
    for call in calls:
        cfg = eval(compile(ast.Expression(call), "docs", "eval"), {"load_config": load_config, "PRESET": PRESET})
        config_file = getattr(call.args[0], "value", None) or ""
        check_plan(cfg, Plan()) if "experience" in config_file else validate(cfg)


def test_the_readme_is_a_page_in_the_documented_order():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    headings = re.findall(r"^## (.+)$", readme, flags=re.M)
    order = ["Install", "Your own prompt", "Data format", "What a run writes", "Command line", "Python API", "The demo"]
    order += ["Limitations", "Documentation"]
    assert [next(h for h in headings if h.startswith(o)) for o in order] == [h for h in headings if h != "Why"]


def test_every_cited_result_file_exists_and_only_those_are_kept():
    results = (ROOT / "docs" / "results.md").read_text()
    cited = set(re.findall(r"benchmarks/results/[\w.\-]+\.\w+", results))
    kept = {str(p.relative_to(ROOT)) for p in (ROOT / "benchmarks" / "results").iterdir()}
    assert cited <= kept, sorted(cited - kept)
    assert kept <= cited, f"not cited by docs/results.md (delete them, git keeps history): {sorted(kept - cited)}"


def test_every_results_table_has_its_command_and_date():
    """Each `##`/`###` section of docs/results.md that holds a table names the command and the date beside it."""
    sections = re.split(r"^#{2,3} ", (ROOT / "docs" / "results.md").read_text(), flags=re.M)[1:]
    for section in sections:
        if re.search(r"^\|.*\|$", section, flags=re.M):
            title = section.splitlines()[0]
            assert re.search(r"`(opcd |bash |python |\.venv/bin/python )", section), f"no command: {title}"
            assert re.search(r"20\d\d-\d\d-\d\d", section), f"no date: {title}"
