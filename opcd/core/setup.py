"""Everything a training run holds, built once before step 1: models, teacher, optimizer, resume state, logger.

`set_up` checks what it can before anything large loads (the config, the run directory's identity, FSDP limits),
then builds the student (fp32 master weights, or LoRA adapters), the teacher, the optimizer, and on resume restores
weights, optimizer, teacher and RNG state from the newest checkpoint, so the run continues exactly.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch

from opcd.config import Config, ModelConfig, TrainConfig, save_config, validate
from opcd.core import checkpoint, heap, models, objectives, rundir
from opcd.core.distributed import Ranks
from opcd.core.metrics import MetricsLog, check_trackers_installed
from opcd.core.rollout import PromptSource, RolloutSource, eos_ids, resolve_device
from opcd.core.teachers import Teacher, build_teacher
from opcd.core.vllm_sampler import VLLMSampler, require_vllm
from opcd.core.watch import Watch
from opcd.errors import OpcdError
from opcd.versions import changed


@dataclass
class Run:
    """One training run's state between steps."""

    cfg: Config
    ranks: Ranks
    mine: slice  # this rank's share of each step's rollouts
    run_dir: Path
    start_step: int
    mode: objectives.Mode
    tokenizer: object
    source: RolloutSource
    device: torch.device
    student: torch.nn.Module
    teacher: Teacher
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    eos: set[int]
    engine: VLLMSampler | None  # the student's vLLM sampler, or None for HF generate
    log: MetricsLog | None  # rank 0 only
    watch: Watch | None = None  # rank 0 only: the held-out gap and sample answers between steps


def build_student(cfg: ModelConfig, seed: int):
    """Full fine-tuning keeps fp32 master weights (compute runs in bf16 autocast); LoRA trains fp32 adapters on a
    frozen base held in the compute dtype, their random initialization drawn from `seed` alone (not from whatever
    the process drew before, such as evaluations that a score cache may skip) and leaving the global RNG as it was."""
    if cfg.lora_rank == 0:
        return models.load_model(cfg.student, "fp32").train()
    from peft import LoraConfig, get_peft_model

    base = models.load_model(cfg.student, cfg.dtype)
    targets = cfg.lora_targets if cfg.lora_targets == "all-linear" else [t.strip() for t in cfg.lora_targets.split(",")]
    lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=targets)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(base, lora).train()


def make_optimizer(params, t: TrainConfig) -> torch.optim.AdamW:
    """AdamW with the fused kernel where this torch has it for these tensors (7x faster than foreach on CPU here)."""
    kwargs = {"lr": t.lr, "betas": (t.beta1, t.beta2), "eps": t.adam_eps, "weight_decay": t.weight_decay}
    try:
        return torch.optim.AdamW(params, fused=True, **kwargs)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(params, **kwargs)


def check_fsdp(cfg: Config, source: RolloutSource | None) -> None:
    """What sharded training does not cover, refused before any model is loaded."""
    for bad, why in [
        (cfg.model.lora_rank > 0, "LoRA adapters are small enough to replicate: launch without FSDP (DDP)"),
        (
            cfg.model.teacher in ("live", "ema"),
            f"model.teacher = '{cfg.model.teacher}' reads the sharded student's "
            "weights: use the frozen teacher or a teacher model",
        ),
        (
            bool(cfg.train.eval_every or cfg.train.log_samples_every),
            "train.eval_every and train.log_samples_every sample from the whole student on one rank: set them to 0 "
            "and measure the checkpoints afterwards (opcd eval)",
        ),
        (cfg.rollout.engine == "vllm", "vLLM rollouts need the whole weights on each rank: launch without FSDP"),
        (
            cfg.train.lr_by_signal,
            "train.lr_by_signal reads each micro-batch's whole gradient, which FSDP shards and averages as it goes: "
            "set it to false or launch without FSDP (DDP)",
        ),
        (
            cfg.loss.teacher_share > 0,
            "loss.teacher_share gives ranks different numbers of student samples per step, which sharded sampling "
            "cannot follow: set it to 0 or launch without FSDP (DDP)",
        ),
        (
            source is not None and not source.even_across_ranks,
            "this rollout source (game episodes) gives ranks different numbers of samples per step, which sharded "
            "steps cannot follow",
        ),
    ]:
        if bad:
            raise OpcdError(f"FSDP (accelerate config distributed_type: FSDP): {why}")


def _enable_gradient_checkpointing(student) -> None:
    if hasattr(student, "activation_checkpointing_enable"):  # transformers >= 5.2x
        student.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def _window(model, default: int = 10**9) -> int:
    return getattr(getattr(model, "config", None), "max_position_embeddings", None) or default


def _restore(run: Run, state: dict, resumed_from: Path) -> None:
    """Optimizer, teacher and RNG state of the checkpoint (its weights were loaded before sharding)."""
    if run.ranks.fsdp:
        run.ranks.load_full_optimizer_state(run.student, run.optimizer, state["optimizer"])
    else:
        run.optimizer.load_state_dict(state["optimizer"])
    run.teacher.load_state_dict(state["teacher"])
    checkpoint.set_rng_state(state["rng"])
    if run.ranks.main:
        print(f"opcd: resuming {run.run_dir} from step {run.start_step}")
        upgraded = changed(state.get("software", {}))
        if upgraded:  # allowed (a fix may be why the run is resumed), but the run is no longer one set of versions
            print(
                f"opcd: warning: resuming with other library versions than step {run.start_step} was trained with "
                f"({', '.join(upgraded)}); the steps after it will not match an uninterrupted run exactly"
            )


def _lock(run_dir: Path, ranks: Ranks, stack: ExitStack) -> None:
    """Rank 0 holds the run directory for the run's life (`stack` releases it); every rank learns if it could not."""
    error = None
    if ranks.main:
        try:
            stack.enter_context(rundir.hold(run_dir))
        except OpcdError as e:
            error = e
    if ranks.sum([float(error is not None)])[0]:
        raise error or OpcdError(f"{run_dir} is in use by another opcd run (the first process names it)")


def _note_allocator(allocator: str) -> None:
    """Once per run: a process that could run on mimalloc but does not (your own Python calling `train`)."""
    library = heap.mimalloc_library()
    if allocator.startswith("glibc") and library is not None:
        print(
            f"opcd: note: glibc's allocator serves this process, which makes training steps slower; start Python with "
            f"LD_PRELOAD={library} MIMALLOC_PURGE_DELAY=-1 (the opcd command does this itself)"
        )


def set_up(cfg: Config, source: RolloutSource | None, resume: bool | str, stack: ExitStack) -> Run:
    """Check, lock, load and (on resume) restore everything step 1 needs; rank 0 opens the run directory's log.
    `stack` holds the run directory's lock until the caller closes it."""
    validate(cfg)
    allocator = heap.configure()
    check_trackers_installed(cfg.train.report_to)
    if cfg.rollout.engine == "vllm":
        require_vllm()  # before any model is loaded
    ranks = Ranks()
    mine = ranks.shard(cfg.train.prompts_per_step * cfg.rollout.samples_per_prompt)
    if ranks.fsdp:
        check_fsdp(cfg, source)
    run_dir = Path(cfg.train.run_dir)
    _lock(run_dir, ranks, stack)
    if ranks.main:
        checkpoint.remove_leftovers(run_dir)
    start_step, state, resumed_from = checkpoint.resume_point(run_dir, cfg, resume)
    tokenizer = models.load_tokenizer(cfg.model.student)
    if source is None:
        source = PromptSource(cfg.data, tokenizer)
    device = resolve_device(cfg.model.device)
    student = build_student(cfg.model, cfg.train.seed).to(device)
    source.check_lengths(limit := _window(student), cfg.rollout.max_new_tokens)
    teacher = build_teacher(cfg.model, student, tokenizer)
    if _window(teacher.model, limit) < limit:  # a cross-size teacher with a shorter window than the student's
        source.check_lengths(_window(teacher.model, limit), cfg.rollout.max_new_tokens, "the teacher's")
    if cfg.train.gradient_checkpointing:
        _enable_gradient_checkpointing(student)
    if state is not None:
        if state.get("fsdp", False) != ranks.fsdp:
            saved = "FSDP" if state.get("fsdp", False) else "replicated weights"
            raise OpcdError(f"cannot resume {run_dir}: its checkpoint was written with {saved}; launch it the same way")
        checkpoint.load_student_weights(student, resumed_from)  # into the whole model, before any sharding
    if ranks.fsdp:
        student = ranks.shard_model(student)
        if ranks.main:
            print(f"opcd: student sharded with FSDP2 over {ranks.world} processes")
    params = [p for p in student.parameters() if p.requires_grad]
    run = Run(
        cfg=cfg, ranks=ranks, mine=mine, run_dir=run_dir, start_step=start_step, mode=objectives.MODES[cfg.loss.mode],
        tokenizer=tokenizer, source=source, device=device, student=student, teacher=teacher, params=params,
        optimizer=make_optimizer(params, cfg.train), eos=eos_ids(tokenizer, student), engine=None, log=None,
    )  # fmt: skip
    if state is not None:
        _restore(run, state, resumed_from)
    ranks.barrier()  # every rank has read the run directory before rank 0 writes to it
    if ranks.main:
        _note_allocator(allocator)
        slow = models.bf16_warning(cfg.model.dtype, device)
        if slow:
            print(slow)
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.toml")
        run.log = MetricsLog(run_dir, start_step, report_to=cfg.train.report_to, config=cfg.to_dict())
        run.watch = Watch(cfg, tokenizer, getattr(source, "examples", None))
    if cfg.rollout.engine == "vllm":
        student_dir = models.resolve(cfg.model.student)
        run.engine = VLLMSampler(student_dir, cfg.rollout, run.eos, cfg.model.dtype, cfg.train.seed)
    return run
