"""From a run to a model you ship: distill-prompt without a checker (the context gap), the model card, `opcd export`
(full and merged LoRA, reloaded with plain transformers), the Python entry point, and an offline tracker."""

from __future__ import annotations

import json
import sys

import pytest
import torch

import opcd
from opcd.cli import main
from opcd.config import RolloutConfig, load_config
from opcd.errors import OpcdError
from opcd.recipes.export import export, model_card
from opcd.recipes.system_prompt import EvalPlan, distill_prompt
from tests.conftest import TOY_CONTEXT

TINY = ["train.steps=2", "train.prompts_per_step=2", "rollout.max_new_tokens=4", "train.report_to=none"]
EVAL = RolloutConfig.greedy(5)


def _cfg(tiny_model, prompts, run, *extra):
    return load_config(
        None,
        [f"model.student={tiny_model}", "model.dtype=fp32", f"data.prompts={prompts}", f"data.context={TOY_CONTEXT}",
         *TINY, "train.save_every=1", f"train.run_dir={run}", *extra],
    )  # fmt: skip


@pytest.fixture(scope="module")
def gap_run(tiny_model, prompts_file, tmp_path_factory):
    """distill-prompt with no checker: the gap is the measure, and it picks the checkpoint on validation prompts."""
    tmp = tmp_path_factory.mktemp("gap")
    validation = tmp / "validation.jsonl"
    validation.write_text("".join(json.dumps({"prompt": f"Describe object number {i}."}) + "\n" for i in range(3)))
    run = tmp / "run"
    plan = EvalPlan(rollout=EVAL, ood={}, test_max=6, validation_prompts=str(validation))
    return run, distill_prompt(_cfg(tiny_model, prompts_file, run), plan, progress=False)


def test_distill_without_a_checker_reports_the_gap(gap_run):
    run, results = gap_run
    assert results["rates"] == {} and results["metric"] == "context gap"
    g = results["gap"]
    assert g["base"]["reverse_kl"] > 0 and g["base"]["extra_nll"] != 0 and g["base"]["n"] == 6
    for k in ("reverse_kl", "extra_nll"):
        assert g["closed"][k] == pytest.approx(1 - g["student"][k] / g["base"][k])
    assert results["checkpoint"]["rule"].startswith("best on validation")
    rates = results["checkpoint"]["validation_rates"]
    assert set(map(int, rates)) == {1, 2} and all(v < 0 for v in rates.values())  # minus the gap
    report = (run / "report.md").read_text()
    assert "share of the gap closed" in report and "Held-out answers" in report
    assert (run / "training.png").stat().st_size > 1000


def test_the_selected_checkpoint_carries_a_model_card(gap_run):
    run, results = gap_run
    card = (run / "checkpoints" / f"step-{results['checkpoint']['step']:06d}" / "model" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers") and TOY_CONTEXT in card and "gap closed" in card
    assert "| method | on-policy context distillation |" in card and "torch " in card
    cfg = load_config(None, ["model.student=qwen2.5-coder-0.5b-instruct"])  # a packaged model names its hub origin
    assert model_card(cfg, "Be brief.", None, {}).startswith("---\nbase_model: Qwen/Qwen2.5-Coder-0.5B-Instruct\n")


def test_export_writes_a_model_plain_transformers_loads(gap_run, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run, results = gap_run
    out = export(str(run), str(tmp_path / "shipped"), private=True)
    card = (out / "README.md").read_text()
    assert TOY_CONTEXT not in card and "The text is private." in card
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, return_tensors="pt")
    assert model.generate(ids if torch.is_tensor(ids) else ids["input_ids"], max_new_tokens=2).shape[-1] > 0
    with pytest.raises(OpcdError, match="not empty"):
        export(str(run), str(out))


def test_lora_run_exports_merged_with_the_same_outputs(tiny_model, prompts_file, tmp_path, capsys):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    run = tmp_path / "lora"
    cfg = _cfg(tiny_model, prompts_file, run, "model.lora_rank=4")
    distill_prompt(cfg, EvalPlan(scorer=("starts_with:Arr!",), rollout=EVAL, ood={}, test_max=4), progress=False)
    assert main(["export", str(run), "--out", str(tmp_path / "merged"), "--merge-lora"]) == 0
    merged = tmp_path / "merged"
    assert not (merged / "adapter_config.json").exists() and (merged / "README.md").is_file()
    assert "LoRA rank 4" in (merged / "README.md").read_text()
    plain = AutoModelForCausalLM.from_pretrained(merged).eval()
    adapter = AutoPeftModelForCausalLM.from_pretrained(run / "checkpoints" / "step-000002" / "model").eval()
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        assert torch.allclose(plain(ids).logits, adapter(ids).logits, atol=1e-4)
    assert "exported to" in capsys.readouterr().out


def test_export_refuses_a_directory_that_is_not_a_run(tmp_path):
    assert main(["export", str(tmp_path)]) == 2


def test_distill_from_python_with_a_list_and_a_custom_scorer(tiny_model, prompts_file, tmp_path):
    prompts = [json.loads(line)["prompt"] for line in prompts_file.read_text().splitlines()]
    seen = []

    def pirate(answer: str) -> bool:
        seen.append(answer)
        return answer.lower().startswith("arr")

    result = opcd.distill(
        str(tiny_model), TOY_CONTEXT, prompts, scorer=pirate, run_dir=str(tmp_path / "run"), ood=False,
        progress=False, model={"dtype": "fp32"}, train={"steps": 2, "prompts_per_step": 2, "report_to": "none"},
        rollout={"max_new_tokens": 4},
    )  # fmt: skip
    assert isinstance(result, opcd.Result) and (result.model_dir / "adapter_config.json").is_file()  # LoRA preset
    assert result.results["scorer"][0].startswith("python:") and ".pirate:" in result.results["scorer"][0]
    assert result.results["test"]["n"] == 4 and len(seen) == 3 * 4  # base without, with, student
    assert result.results["gap"] is not None and result.report.is_file()


def test_distill_from_python_with_a_dataset_and_a_model_object(tiny_model, smol_tokenizer, tmp_path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    rows = [{"messages": [{"role": "user", "content": f"Question {i}: what is {i} plus {i}?"}]} for i in range(10)]
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    result = opcd.distill(
        model, TOY_CONTEXT, Dataset.from_list(rows), tokenizer=smol_tokenizer, run_dir=str(tmp_path / "run"),
        ood=False, progress=False, model={"dtype": "fp32"},
        train={"steps": 1, "prompts_per_step": 2, "report_to": "none"}, rollout={"max_new_tokens": 3},
    )  # fmt: skip
    assert result.results["test"]["n"] == 4 and result.results["rates"] == {}
    assert (tmp_path / "run" / "inputs" / "model" / "config.json").is_file()
    with pytest.raises(OpcdError, match="tokenizer"):
        opcd.distill(model, TOY_CONTEXT, ["a", "b"], run_dir=str(tmp_path / "other"))
    with pytest.raises(OpcdError, match=r"prompts\[1\]"):
        opcd.distill(str(tiny_model), TOY_CONTEXT, ["fine", 3] * 5, run_dir=str(tmp_path / "bad"))


def test_an_offline_tracker_receives_metrics_and_samples(tiny_model, prompts_file, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from opcd.core.train import train

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    cfg = _cfg(tiny_model, prompts_file, run, "train.report_to=tensorboard,wandb", "train.log_samples_every=2")
    train(cfg, progress=False)
    offline = list((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb"))
    assert any((run / "tensorboard").iterdir())
    assert len((run / "samples.jsonl").read_text().splitlines()) == 2


def test_a_missing_or_unknown_tracker_is_one_clear_line(tiny_model, prompts_file, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if it were not installed
    from opcd.core.train import train

    with pytest.raises(OpcdError, match="pip install mlflow-skinny"):
        train(_cfg(tiny_model, prompts_file, tmp_path / "r", "train.report_to=mlflow"), progress=False)
    with pytest.raises(OpcdError, match="unknown tracker 'neptune'"):
        train(_cfg(tiny_model, prompts_file, tmp_path / "r", "train.report_to=neptune"), progress=False)
