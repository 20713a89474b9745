"""Run configuration: frozen dataclasses, one level of nesting, TOML in, `key=value` overrides, resolved copy saved.

Every field is documented here and in docs/configuration.md (a test keeps the two in step).
Unknown sections or keys and wrong types fail with one line naming the key.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from opcd.errors import OpcdError
from opcd.io import write_text


@dataclass(frozen=True)
class ModelConfig:
    student: str = "qwen2.5-coder-0.5b-instruct"  # packaged short name, local HF directory, or hub id
    teacher: str = "frozen"  # frozen (initial student) | live | ema | a model name/path (cross-size teacher)
    ema_decay: float = 0.99  # teacher = ema: weight of the old teacher per step
    teacher_cache: bool = True  # frozen teachers: compute the shared context's keys/values once per run
    dtype: Literal["bf16", "fp32"] = "bf16"  # compute dtype (autocast); trainable weights stay fp32
    device: str = "auto"  # auto (this rank's GPU if any, else cpu) | cpu | cuda | cuda:N
    teacher_device: str = ""  # a frozen or cross-size teacher on another device, e.g. cuda:1 ("" = the student's)
    lora_rank: int = 0  # 0 = full fine-tuning; > 0 = LoRA through PEFT
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_targets: str = "all-linear"  # PEFT target_modules: "all-linear" or comma-separated module names


@dataclass(frozen=True)
class DataConfig:
    prompts: str = ""  # JSONL, parquet, CSV, JSON, a `save_to_disk` folder or hf:org/name; rows as below
    split: str = "train"  # the split of a hub dataset, or of a saved folder holding several
    prompt_column: str = "prompt"  # a row's user prompt (a string) ...
    messages_column: str = "messages"  # ... or its chat messages ([{"role", "content"}, ...], the user's last)
    context_column: str = "context"  # optional: the row's own context (overrides the shared one)
    answer_column: str = "answer"  # optional: the reference answer task graders compare with
    context: str = ""  # shared context for rows without their own (e.g. the system prompt to distill)
    context_file: str = ""  # read the shared context from this file instead
    placement: Literal["system", "user"] = "system"  # where the teacher sees the context
    user_template: str = "{context}\n\n{prompt}"  # placement = user: the teacher's user turn
    keep_default_system: bool = True  # keep the template's default system text on both sides (context appended)
    system_separator: str = "\n\n"  # between the default system text and the context
    max_prompts: int = 0  # use only the first N rows (0 = all)


@dataclass(frozen=True)
class RolloutConfig:
    samples_per_prompt: int = 1
    temperature: float = 1.0  # also divides both models' logits in the loss, as in the paper
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    max_new_tokens: int = 512
    batch_size: int = 0  # prompts per generate call (0 = the whole step at once); changes the samples drawn
    engine: Literal["hf", "vllm"] = "hf"  # who samples the student: HF generate, or a colocated vLLM engine (GPU)
    vllm_gpu_memory: float = 0.3  # engine = vllm: share of the GPU's memory the engine may take

    @classmethod
    def greedy(cls, max_new_tokens: int, batch_size: int = 0) -> RolloutConfig:
        """Greedy decoding (evaluation only: training samples at temperature > 0)."""
        return cls(temperature=0.0, max_new_tokens=max_new_tokens, batch_size=batch_size)


@dataclass(frozen=True)
class LossConfig:
    mode: Literal["opcd", "offpolicy", "sft"] = "opcd"  # who samples and which loss (docs/methods.md)
    estimator: Literal["topk", "full", "tail", "sampled"] = "full"  # opcd: reverse-KL estimator (topk = paper)
    top_k: int = 256  # topk/tail/offpolicy: size of the token set
    renormalize: bool = False  # topk/offpolicy: renormalize both distributions on the top-k set
    discount: float = 0.0  # sampled: 0 = per-token reward, 1 = reward-to-go (sequence-level KL)
    reduction: Literal["token", "sequence"] = "token"  # global token mean, or per-sequence mean then batch mean
    chunk_size: int = 32  # response positions per loss chunk (bounds logits memory)
    min_kl: float = 1e-3  # opcd: stop at step 1 if the context changes the teacher less than this (nats/token)
    # opcd: share of each step's rollouts the teacher answers with the context, trained with the off-policy forward KL
    # (GKD's 1 - lambda); it falls linearly to 0 over teacher_share_steps. 0 = pure OPCD (the paper)
    teacher_share: float = 0.0
    teacher_share_steps: int = 0  # steps over which teacher_share falls to 0 (0 = the whole run)


@dataclass(frozen=True)
class TrainConfig:
    run_dir: str = "runs/opcd"
    steps: int = 50
    prompts_per_step: int = 128
    micro_batch_size: int = 8  # sequences per forward/backward; does not change the result (but see lr_by_signal)
    lr: float = 5e-6
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.999
    adam_eps: float = 1e-8  # AdamW ε: gradients far below it move their weights in proportion, not by the full rate
    warmup_steps: int = 0  # linear warmup (the paper: none)
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"  # after warmup; linear/cosine fall toward 0
    lr_by_signal: bool = False  # times the share of the step's gradient its micro-batches agree on (core/signal.py)
    full_rate_kl: float = 0.0  # below this step KL (nats/token) the rate shrinks in proportion (0 = never; sft: never)
    max_grad_norm: float = 1.0
    seed: int = 0
    save_every: int = 2  # steps between checkpoints (0 = only the final one)
    keep_checkpoints: int = 0  # keep only the newest N (0 = all)
    report_to: str = (
        "tensorboard"  # trackers, comma-separated: tensorboard, wandb, trackio, mlflow; none = only metrics.jsonl
    )
    log_samples_every: int = 0  # steps between logged sample answers (prompt, student, teacher) (0 = never)
    eval_every: int = 0  # steps between context-gap measurements on train.eval_prompts (0 = never)
    eval_prompts: str = ""  # held-out prompts for that gap (any data.prompts format, columns as data's)
    eval_max_prompts: int = 16  # first N of them (0 = all)
    gradient_checkpointing: bool = False


@dataclass(frozen=True)
class ExperienceConfig:
    task: Literal["math", "frozenlake", "sokoban"] = "math"
    model: str = ""  # who solves and writes the lessons ("" = model.student; cross-size: the larger teacher)
    dir: str = "runs/experience"  # seed-N.jsonl (every intermediate context), stairs.png, selections
    problems: str = "opcd:math_train"  # math: problems solved one after another during extraction
    problems_per_seed: int = 8  # problems (games: episodes) each seed solves, i.e. contexts per seed
    seeds: int = 2  # extraction seeds 0..N-1; their intermediate contexts form the candidate pool
    validation: str = "opcd:math_val"  # math: problems that score every intermediate context
    test: str = "opcd:gsm8k_test"  # math: the problems consolidation is tested on (the first --test-n of them)
    validation_max: int = 16  # validation problems (games: episodes) per context (0 = no validation scores)
    token_budget: int = 512  # experience tokens kept; beyond it the oldest whole items are dropped
    solve_tokens: int = 320  # answer budget of an extraction attempt (games: per turn)
    lesson_tokens: int = 160  # budget of the lesson-writing answer
    items_per_problem: int = 2  # keep the first N items of each lesson answer (the prompt asks for 1-2; 0 = all)
    eval_tokens: int = 320  # answer budget when scoring contexts (games: per turn)
    # extraction sampling (attempts and lessons); 0 = the paper's setting for the task: math T 0.6, games T 0.7 with
    # top-p 0.8 (the rollout temperatures of its section 7); top_k 0 = no top-k cut
    temperature: float = 0.0
    top_p: float = 0.0
    top_k: int = 0
    wrapper: str = ""  # file with the in-context template ({context}, {prompt}); "" = built-in for the task
    lesson_prompt: str = ""  # file with the lesson request ({trace}, {experience}); "" = built-in for the task
    # math: grade each attempt against the problem's `answer` and show the result in the trace the lessons are drawn
    # from (as a game shows its success), so a lesson can correct a wrong fact; false = the paper's label-free math
    feedback: bool = False


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    experience: ExperienceConfig = field(default_factory=ExperienceConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class _FromCli(str):
    """A value typed on the command line: parsed as JSON (numbers, true/false) unless the field is a string."""


def _coerce(key: str, value, hint):
    """Check (TOML values) or parse (CLI strings) one value against its annotation."""
    from_cli = isinstance(value, _FromCli) and hint is not str and typing.get_origin(hint) is not Literal
    if isinstance(value, _FromCli):
        value = str(value)
    if typing.get_origin(hint) is Literal:
        if value not in typing.get_args(hint):
            raise OpcdError(f"config key '{key}': {value!r} is not one of {', '.join(map(str, typing.get_args(hint)))}")
        return value
    if from_cli:
        try:
            value = json.loads(value.lower() if hint is bool else value)
        except json.JSONDecodeError:
            raise OpcdError(f"config key '{key}': cannot read {value!r} as {hint.__name__}") from None
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not hint:
        raise OpcdError(f"config key '{key}': expected {hint.__name__}, got {type(value).__name__} {value!r}")
    return value


def build_config(raw: dict, source: str = "defaults") -> Config:
    """A config from nested dicts (as TOML reads, or as `Config.to_dict` writes); `source` names it in errors."""
    sections = {}
    train = raw.get("train")
    if isinstance(train, dict) and "tensorboard" in train:  # before report_to: tensorboard = false meant none
        old = train.pop("tensorboard")
        on = str(old).lower() == "true" if isinstance(old, _FromCli) else bool(old)
        train.setdefault("report_to", "tensorboard" if on else "none")
    for f in dataclasses.fields(Config):
        section_cls = typing.get_type_hints(Config)[f.name]
        hints = typing.get_type_hints(section_cls)
        values = raw.pop(f.name, {})
        if not isinstance(values, dict):
            raise OpcdError(f"{source}: '{f.name}' must be a table ([{f.name}])")
        for key in values:
            if key not in hints:
                raise OpcdError(f"{source}: unknown config key '{f.name}.{key}' (known: {', '.join(hints)})")
        sections[f.name] = section_cls(**{k: _coerce(f"{f.name}.{k}", v, hints[k]) for k, v in values.items()})
    if raw:
        raise OpcdError(f"{source}: unknown config section '{next(iter(raw))}'")
    return Config(**sections)


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Read a TOML file (or start from defaults) and apply `section.key=value` overrides."""
    raw: dict = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise OpcdError(f"config file '{path}' not found")
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise OpcdError(f"config file '{path}': {e}") from None
        source = str(path)
    for item in overrides:
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot:
            raise OpcdError(f"override '{item}': write it as section.key=value, e.g. train.lr=1e-5")
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise OpcdError(f"override '{item}': '{section}' is not a section")
        raw[section][name] = _FromCli(value)
    return build_config(raw, source)


# the range of every numeric field: (test, how the message says it); floats must also be finite
RANGES: dict[str, tuple] = {
    "model.ema_decay": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "model.lora_rank": (lambda v: v >= 0, ">= 0"),
    "model.lora_alpha": (lambda v: v >= 1, ">= 1"),
    "model.lora_dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "data.max_prompts": (lambda v: v >= 0, ">= 0 (0 = all)"),
    "rollout.samples_per_prompt": (lambda v: v >= 1, ">= 1"),
    "rollout.temperature": (lambda v: v > 0, "> 0 (the loss divides logits by it)"),
    "rollout.top_p": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "rollout.top_k": (lambda v: v >= 0, ">= 0 (0 = off)"),
    "rollout.max_new_tokens": (lambda v: v >= 1, ">= 1"),
    "rollout.batch_size": (lambda v: v >= 0, ">= 0 (0 = the whole step)"),
    "rollout.vllm_gpu_memory": (lambda v: 0 < v < 1, "in (0, 1)"),
    "loss.top_k": (lambda v: v >= 1, ">= 1"),
    "loss.discount": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "loss.chunk_size": (lambda v: v >= 1, ">= 1"),
    "loss.min_kl": (lambda v: v >= 0, ">= 0"),
    "loss.teacher_share": (lambda v: 0 <= v <= 1, "in [0, 1] (0 = pure OPCD)"),
    "loss.teacher_share_steps": (lambda v: v >= 0, ">= 0 (0 = the whole run)"),
    "train.steps": (lambda v: v >= 1, ">= 1"),
    "train.prompts_per_step": (lambda v: v >= 1, ">= 1"),
    "train.micro_batch_size": (lambda v: v >= 1, ">= 1"),
    "train.lr": (lambda v: v > 0, "> 0"),
    "train.weight_decay": (lambda v: v >= 0, ">= 0"),
    "train.beta1": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "train.beta2": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "train.adam_eps": (lambda v: v > 0, "> 0"),
    "train.full_rate_kl": (lambda v: v >= 0, ">= 0 (0 = the full rate at any KL)"),
    "experience.temperature": (lambda v: v >= 0, ">= 0 (0 = the paper's for the task)"),
    "experience.top_p": (lambda v: 0 <= v <= 1, "in [0, 1] (0 = the paper's for the task)"),
    "experience.top_k": (lambda v: v >= 0, ">= 0 (0 = no top-k cut)"),
    "train.warmup_steps": (lambda v: v >= 0, ">= 0 (0 = none)"),
    "train.max_grad_norm": (lambda v: v >= 0, ">= 0 (0 = no clipping)"),
    "train.seed": (lambda v: v >= 0, ">= 0"),
    "train.save_every": (lambda v: v >= 0, ">= 0 (0 = only the final checkpoint)"),
    "train.keep_checkpoints": (lambda v: v >= 0, ">= 0 (0 = all)"),
    "train.log_samples_every": (lambda v: v >= 0, ">= 0 (0 = never)"),
    "train.eval_every": (lambda v: v >= 0, ">= 0 (0 = never)"),
    "train.eval_max_prompts": (lambda v: v >= 0, ">= 0 (0 = all)"),
    "experience.problems_per_seed": (lambda v: v >= 1, ">= 1"),
    "experience.seeds": (lambda v: v >= 1, ">= 1"),
    "experience.validation_max": (lambda v: v >= 0, ">= 0"),
    "experience.token_budget": (lambda v: v >= 1, ">= 1"),
    "experience.solve_tokens": (lambda v: v >= 1, ">= 1"),
    "experience.lesson_tokens": (lambda v: v >= 1, ">= 1"),
    "experience.items_per_problem": (lambda v: v >= 0, ">= 0 (0 = all)"),
    "experience.eval_tokens": (lambda v: v >= 1, ">= 1"),
}
_DEVICE = re.compile(r"(auto|cpu|cuda(:\d+)?)")


def check_ranges(cfg: Config) -> None:
    """Every numeric setting within its range (`RANGES`) and finite; the part of `validate` that needs no data."""
    values = {f"{s}.{k}": v for s, section in cfg.to_dict().items() for k, v in section.items()}
    for key, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise OpcdError(f"config key '{key}': {value} is not a finite number")
        if key in RANGES and not RANGES[key][0](value):
            raise OpcdError(f"config key '{key}': {value!r} is out of range: it must be {RANGES[key][1]}")


def check_device(key: str, name: str) -> None:
    """A device this machine has: auto, cpu, cuda, cuda:N."""
    if not _DEVICE.fullmatch(name):
        raise OpcdError(f"{key} = '{name}': use auto, cpu, cuda or cuda:N")
    if name.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(name.partition(":")[2] or 0)
        if index >= count:
            raise OpcdError(f"{key} = '{name}': this machine has {count or 'no'} CUDA device(s); use auto or cpu")


TRACKERS = ("tensorboard", "wandb", "trackio", "mlflow")


def trackers(report_to: str) -> list[str]:
    """`train.report_to` as a list of tracker names ("none" or "" = none)."""
    names = [n.strip() for n in report_to.split(",") if n.strip()]
    return [] if names == ["none"] else names


def check_trackers(report_to: str) -> None:
    for name in trackers(report_to):
        if name not in TRACKERS:
            raise OpcdError(f"train.report_to: unknown tracker '{name}' (known: {', '.join(TRACKERS)}, or none)")


def check_run_dir(path: Path) -> None:
    """The run directory is a writable directory, or can be created as one."""
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise OpcdError(f"train.run_dir '{path}': '{existing}' is a file, not a directory: choose another run_dir")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OpcdError(f"train.run_dir '{path}': '{existing}' is not writable: choose another run_dir")


def validate(cfg: Config) -> None:
    """Checks that need no model, before anything loads; what needs one is checked in `train` before step 1."""
    check_ranges(cfg)
    t, r, l = cfg.train, cfg.rollout, cfg.loss
    rollouts = t.prompts_per_step * r.samples_per_prompt
    checks = [
        (
            r.engine == "hf" or l.mode == "opcd",
            "rollout.engine = 'vllm' samples the student (loss.mode = 'opcd'); the off-policy modes sample the teacher "
            "with HF generate: set rollout.engine = 'hf'",
        ),
        (
            not l.teacher_share or (l.mode == "opcd" and l.estimator != "sampled"),
            f"loss.teacher_share = {l.teacher_share} mixes teacher answers into OPCD's rollouts: it needs "
            "loss.mode = 'opcd' with a topk, full or tail estimator (set loss.teacher_share = 0 otherwise)",
        ),
        (not (cfg.data.context and cfg.data.context_file), "set data.context or data.context_file, not both"),
        (
            "{context}" in cfg.data.user_template and "{prompt}" in cfg.data.user_template,
            "data.user_template must contain {context} and {prompt}",
        ),
        (bool(cfg.data.prompts), "data.prompts is not set: give a JSONL file of prompts"),
        (
            not t.lr_by_signal or (rollouts >= 2 * t.micro_batch_size and rollouts % t.micro_batch_size == 0),
            f"train.lr_by_signal compares a step's micro-batches: it needs 2 or more of the same size, so set "
            f"train.micro_batch_size ({t.micro_batch_size}) to a divisor of the step's {rollouts} rollouts "
            "(train.prompts_per_step x rollout.samples_per_prompt) at most half of it",
        ),
        (
            not t.lr_by_signal or t.micro_batch_size % r.samples_per_prompt == 0,
            f"train.lr_by_signal needs each prompt's {r.samples_per_prompt} samples in one micro-batch: make "
            "train.micro_batch_size a multiple of rollout.samples_per_prompt",
        ),
        (
            not (t.lr_by_signal and l.teacher_share),
            "train.lr_by_signal takes a step's micro-batches to be alike, and loss.teacher_share puts the teacher's "
            "answers in the first ones: set one of them off",
        ),
        (
            not t.eval_every or bool(t.eval_prompts),
            f"train.eval_every = {t.eval_every} needs train.eval_prompts: held-out prompts to measure the gap on",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise OpcdError(message)
    check_device("model.device", cfg.model.device)
    if cfg.model.teacher_device:
        check_device("model.teacher_device", cfg.model.teacher_device)
    check_trackers(t.report_to)
    check_run_dir(Path(t.run_dir))


def save_config(cfg: Config, path: Path) -> None:
    """Write the resolved config as TOML (atomic), so a run directory says exactly what ran."""
    lines = []
    for section, values in cfg.to_dict().items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
        lines.append("")
    write_text(path, "\n".join(lines))
