"""The training loop, top to bottom: sample -> score -> loss -> optimizer step -> log/save.

Per step: draw `prompts_per_step` examples (a seeded permutation per epoch, so any step's batch is known from the seed
alone), sample responses (the student for OPCD, the teacher with context for the off-policy baselines), score the same
response tokens under the teacher's prompt, and backpropagate the per-token loss micro-batch by micro-batch. The loss
weights use the token/sequence counts of the *whole* step, so the update does not depend on the micro-batch size.
Every step reseeds from (seed, step), which together with the saved optimizer state makes resume exact.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from contextlib import nullcontext
from pathlib import Path

import torch
from tqdm import tqdm

from opcd import checkpoint, models, objectives
from opcd.config import Config, ModelConfig, save_config, validate
from opcd.data import load_examples, shared_context
from opcd.distributed import Ranks
from opcd.errors import OpcdError
from opcd.losses import backward_chunked, reduction_weights, reward_to_go
from opcd.metrics import MetricsLog
from opcd.prompts import PromptRenderer, check_lengths
from opcd.rollout import HFSampler, Rollout, autocast, eos_ids, resolve_device
from opcd.scoring import make_batch, response_hidden, response_logits_whole
from opcd.teachers import Teacher, build_teacher
from opcd.versions import changed, software


def build_student(cfg: ModelConfig):
    """Full fine-tuning keeps fp32 master weights (compute runs in bf16 autocast); LoRA trains fp32 adapters on a
    frozen base held in the compute dtype."""
    if cfg.lora_rank == 0:
        return models.load_model(cfg.student, "fp32").train()
    from peft import LoraConfig, get_peft_model

    base = models.load_model(cfg.student, cfg.dtype)
    targets = cfg.lora_targets if cfg.lora_targets == "all-linear" else [t.strip() for t in cfg.lora_targets.split(",")]
    lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=targets)
    return get_peft_model(base, lora).train()


def make_optimizer(params, t) -> torch.optim.AdamW:
    """AdamW with the fused kernel where this torch has it for these tensors (7x faster than foreach on CPU here)."""
    kwargs = {"lr": t.lr, "betas": (t.beta1, t.beta2), "weight_decay": t.weight_decay}
    try:
        return torch.optim.AdamW(params, fused=True, **kwargs)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(params, **kwargs)


def step_seed(seed: int, step: int) -> int:
    return seed * 1_000_003 + step


def batch_indices(n_examples: int, batch: int, seed: int, step: int) -> list[int]:
    """Examples of step `step` (1-based): a window over back-to-back seeded permutations of the data."""
    out = []
    for i in range((step - 1) * batch, step * batch):
        epoch, j = divmod(i, n_examples)
        perm = torch.randperm(n_examples, generator=torch.Generator().manual_seed(step_seed(seed, -1 - epoch)))
        out.append(int(perm[j]))
    return out


RESUMABLE_CHANGES = {
    ("train", "steps"),
    ("train", "save_every"),
    ("train", "keep_checkpoints"),
    ("train", "tensorboard"),
}


def _changed(saved: dict, now: dict) -> list[str]:
    sections = [s for s in now if s != "experience"]  # how the context was made, not how training runs
    return [
        f"{s}.{k}"
        for s in sections
        for k in now[s]
        if now[s][k] != saved.get(s, {}).get(k) and (s, k) not in RESUMABLE_CHANGES
    ]


def check_resumable(run_dir: Path, cfg: Config) -> None:
    """Before expensive work: refuse a run directory whose checkpoints were made with another config."""
    if checkpoint.list_checkpoints(run_dir, resumable=True) and (run_dir / "config.toml").is_file():
        from opcd.config import load_config

        changed = _changed(load_config(run_dir / "config.toml", []).to_dict(), cfg.to_dict())
        if changed:
            raise OpcdError(f"cannot resume {run_dir}: config changed since the checkpoint ({', '.join(changed)})")


def _start(run_dir: Path, cfg: Config, resume: bool) -> tuple[int, dict | None, Path | None]:
    found = checkpoint.list_checkpoints(run_dir, resumable=True)
    if checkpoint.list_checkpoints(run_dir) and not resume:
        raise OpcdError(
            f"{run_dir} already holds checkpoints: pass --resume to continue, or choose another train.run_dir"
        )
    if not (resume and found):
        return 0, None, None
    step, path = found[-1]
    state = checkpoint.load_trainer_state(path)
    changed = _changed(state["config"], cfg.to_dict())
    if changed:
        raise OpcdError(f"cannot resume {run_dir}: config changed since the checkpoint ({', '.join(changed)})")
    return step, state, path


def _sample(
    mode: objectives.Mode,
    cfg: Config,
    student,
    teacher: Teacher,
    tokenizer,
    eos,
    pairs,
    idx,
    seed,
    first_chunk=0,
    engine=None,
    synced=False,
):
    """Responses for the drawn examples: the student answers its own prompt, or the teacher answers with context."""
    on_policy = mode.sampler == "student"
    prompts = [pairs[i].student_ids if on_policy else pairs[i].teacher_ids for i in idx]
    if engine is not None:  # vLLM: the student's current weights go into the engine first
        engine.sync(student)
        results = engine.generate(prompts, seed, first_chunk)
    else:
        with nullcontext(student) if on_policy else teacher.active() as model:
            sampler = HFSampler(
                model,
                cfg.rollout,
                eos,
                tokenizer.pad_token_id,
                cfg.model.dtype,
                synced=synced and on_policy,
                rows=None if on_policy else teacher.rows,
            )
            results = sampler.generate(prompts, seed, first_chunk)
    return [
        Rollout(i, pairs[i].student_ids, pairs[i].teacher_ids, pairs[i].teacher_prefix, response, finished)
        for i, (response, finished) in zip(idx, results, strict=True)
    ]


def _diagnostics(sums: dict[str, float], mask: torch.Tensor, temp: float, top_k: int):
    """Per chunk: the full-vocabulary reverse KL and the student's top-k mass (logged, never trained on)."""

    @torch.no_grad()
    def on_chunk(s_logits, t_logits, pos):
        logp_s = torch.log_softmax(s_logits.float() / temp, -1)
        valid = mask[:, pos]
        sums["topk_mass"] += (logp_s.exp().topk(min(top_k, logp_s.shape[-1]), -1).values.sum(-1) * valid).sum().item()
        if t_logits is not None:
            logp_t = torch.log_softmax(t_logits.float() / temp, -1)
            sums["kl_full"] += ((logp_s.exp() * (logp_s - logp_t)).sum(-1) * valid).sum().item()

    return on_chunk


def game_of(cfg: Config) -> str:
    """`data.prompts = "game:NAME"`: train on the turns of episodes of that game instead of a prompt file."""
    return cfg.data.prompts[5:] if cfg.data.prompts.startswith("game:") else ""


def _check_fsdp(cfg: Config) -> None:
    """What sharded training does not cover, refused before any model is loaded."""
    for bad, why in [
        (cfg.model.lora_rank > 0, "LoRA adapters are small enough to replicate: launch without FSDP (DDP)"),
        (
            cfg.model.teacher in ("live", "ema"),
            f"model.teacher = '{cfg.model.teacher}' reads the sharded student's "
            "weights: use the frozen teacher or a teacher model",
        ),
        (cfg.rollout.engine == "vllm", "vLLM rollouts need the whole weights on each rank: launch without FSDP"),
        (bool(game_of(cfg)), "game episodes differ in length across ranks, which sharded steps cannot follow"),
    ]:
        if bad:
            raise OpcdError(f"FSDP (accelerate config distributed_type: FSDP): {why}")


def train(cfg: Config, resume: bool = False, progress: bool = True) -> Path:
    """Train the student as `cfg` says; returns the run directory (checkpoints, metrics.jsonl, config.toml)."""
    validate(cfg)
    models.limit_heap_growth()
    if cfg.rollout.engine == "vllm":
        from opcd.vllm_sampler import require_vllm

        require_vllm()  # before any model is loaded
    ranks = Ranks()
    if ranks.fsdp:
        _check_fsdp(cfg)
    mine = ranks.shard(cfg.train.prompts_per_step * cfg.rollout.samples_per_prompt)
    progress = progress and ranks.main
    run_dir = Path(cfg.train.run_dir)
    start_step, state, resumed_from = _start(run_dir, cfg, resume)
    mode = objectives.MODES[cfg.loss.mode]
    tokenizer = models.load_tokenizer(cfg.model.student)
    game = game_of(cfg)
    if game:  # the prompts are the turns of episodes played each step (opcd.episodes)
        from opcd.episodes import POOL, TRAINING_SEEDS, episode_rollouts, game_renderer, play
        from opcd.games import make_game

        make_game(game)  # an unknown game fails before any model loads

        context = shared_context(cfg.data)
        if not context.strip():
            raise OpcdError("a game run needs the experience to distill: set data.context or data.context_file")
        renderer = game_renderer(tokenizer, cfg.data.user_template)
        examples, pairs = [], []
    else:
        examples = load_examples(cfg.data)
        renderer = PromptRenderer(tokenizer, cfg.data)
        pairs = [renderer.render(e.messages, e.context) for e in examples]
    device = resolve_device(cfg.model.device)
    student = build_student(cfg.model).to(device)
    limit, sources = getattr(student.config, "max_position_embeddings", None) or 10**9, [e.source for e in examples]
    check_lengths(pairs, sources, limit, cfg.rollout.max_new_tokens)
    teacher = build_teacher(cfg.model, student, tokenizer)
    window = getattr(getattr(teacher.model, "config", None), "max_position_embeddings", None) or limit
    if window < limit:  # a cross-size teacher with a shorter window than the student's
        check_lengths(pairs, sources, window, cfg.rollout.max_new_tokens, "the teacher's")
    if cfg.train.gradient_checkpointing:
        if hasattr(student, "activation_checkpointing_enable"):  # transformers >= 5.2x
            student.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
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
    t = cfg.train
    optimizer = make_optimizer(params, t)
    if state is not None:
        if ranks.fsdp:
            ranks.load_full_optimizer_state(student, optimizer, state["optimizer"])
        else:
            optimizer.load_state_dict(state["optimizer"])
        teacher.load_state_dict(state["teacher"])
        checkpoint.set_rng_state(state["rng"])
        if ranks.main:
            print(f"opcd: resuming {run_dir} from step {start_step}")
            upgraded = changed(state.get("software", {}))
            if upgraded:  # allowed (a fix may be why the run is resumed), but the run is no longer one set of versions
                print(
                    f"opcd: warning: resuming with other library versions than step {start_step} was trained with "
                    f"({', '.join(upgraded)}); the steps after it will not match an uninterrupted run exactly"
                )
    ranks.barrier()  # every rank has read the run directory before rank 0 writes to it
    log = None
    if ranks.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.toml")
        log = MetricsLog(run_dir, start_step, tensorboard=t.tensorboard)
    eos = eos_ids(tokenizer, student)
    engine = None
    if cfg.rollout.engine == "vllm":
        from opcd.vllm_sampler import VLLMSampler

        engine = VLLMSampler(models.resolve(cfg.model.student), cfg.rollout, eos, cfg.model.dtype, t.seed)
    temp, dtype, chunk = cfg.rollout.temperature, cfg.model.dtype, cfg.loss.chunk_size
    token_loss = objectives.token_loss(cfg.loss, temp)
    head = student.get_output_embeddings()
    timers: dict[str, float] = defaultdict(float)
    warned = False

    def student_head(hidden):
        if ranks.fsdp:  # the student's forward already ended in the head (FSDP gathers it with the root)
            return hidden
        with autocast(dtype, device):
            return head(hidden)

    def teacher_head(hidden):
        began = time.perf_counter()
        logits = teacher.head(hidden, dtype).to(device)  # a teacher on another device hands its logits over
        timers["teacher"] += time.perf_counter() - began
        return logits

    def draw(indices: list[int], seed: int, first_chunk: int) -> tuple[list[Rollout], int]:
        """The rollout stage: this rank's samples for the drawn examples, and how many games were won."""
        if not game:
            samples = _sample(
                mode, cfg, student, teacher, tokenizer, eos, pairs, indices, seed, first_chunk, engine, ranks.fsdp
            )
            return samples, 0
        on_policy = mode.sampler == "student"  # the student plays (opcd), or the teacher with the context
        with nullcontext(student) if on_policy else teacher.active() as player:
            episodes = play(
                player,
                tokenizer,
                renderer,
                game,
                [TRAINING_SEEDS + i for i in indices],
                cfg.rollout,
                dtype,
                seed + ranks.rank,
                None if on_policy else context,
                rows=None if on_policy else teacher.rows,
            )
        return episode_rollouts(renderer, episodes, context), sum(e.success for e in episodes)

    bar = tqdm(
        range(start_step + 1, t.steps + 1),
        desc="opcd train",
        unit="step",
        disable=not progress,
        initial=start_step,
        total=t.steps,
    )
    for step in bar:
        timers.clear()
        step_began = time.perf_counter()
        torch.manual_seed(step_seed(t.seed, step))
        idx = batch_indices(POOL if game else len(examples), t.prompts_per_step, t.seed, step)
        idx = [i for i in idx for _ in range(cfg.rollout.samples_per_prompt)]
        first_chunk = mine.start // (cfg.rollout.batch_size or (mine.stop - mine.start))
        rollouts, wins = draw(idx[mine], step_seed(t.seed, step), first_chunk)
        timers["generate"] = time.perf_counter() - step_began
        local_tokens = sum(len(r.response) for r in rollouts)
        local_unfinished = sum(not r.finished for r in rollouts)
        shared = ranks.sum([local_tokens, local_unfinished, len(rollouts), wins])
        total_tokens, unfinished, sequences, wins = (int(v) for v in shared)
        sums: dict[str, float] = defaultdict(float)

        for start in range(0, len(rollouts), t.micro_batch_size):
            micro = rollouts[start : start + t.micro_batch_size]
            responses = [r.response for r in micro]
            s_batch = make_batch([r.student_prompt for r in micro], responses, tokenizer.pad_token_id).to(device)
            mask = s_batch.response_mask
            weights = reduction_weights(mask, cfg.loss.reduction, total_tokens=total_tokens, total_sequences=sequences)
            grad_weights = weights * ranks.loss_scale
            t_hidden = None
            if mode.uses_teacher_logits:
                began = time.perf_counter()
                t_hidden = teacher.hidden(
                    [r.teacher_prompt for r in micro],
                    responses,
                    [r.teacher_prefix for r in micro],
                    tokenizer.pad_token_id,
                    dtype,
                )
                timers["teacher"] += time.perf_counter() - began
            began, teacher_before = time.perf_counter(), timers["teacher"]
            with autocast(dtype, device):  # under FSDP: the logits themselves (see student_head)
                s_hidden = (response_logits_whole if ranks.fsdp else response_hidden)(student, s_batch)
            loss_fn = token_loss
            if objectives.needs_returns(cfg.loss):
                rewards = backward_chunked(
                    s_hidden.detach(),
                    t_hidden,
                    student_head,
                    teacher_head,
                    s_batch.response_ids,
                    grad_weights,
                    objectives.sampled_reward(temp),
                    chunk,
                )
                loss_fn = objectives.sampled_with_returns(reward_to_go(rewards, mask, cfg.loss.discount), temp)
            values = backward_chunked(
                s_hidden,
                t_hidden,
                student_head,
                teacher_head,
                s_batch.response_ids,
                grad_weights,
                loss_fn,
                chunk,
                on_chunk=_diagnostics(sums, mask, temp, cfg.loss.top_k),
            )
            sums["loss"] += (values * weights).sum().item()
            timers["student"] += time.perf_counter() - began - (timers["teacher"] - teacher_before)

        names = ["loss", "kl_full", "topk_mass"]
        sums.update(zip(names, ranks.sum([sums[n] for n in names]), strict=True))
        kl = sums["kl_full"] / max(total_tokens, 1)
        if step == 1 and mode.uses_teacher_logits and kl < cfg.loss.min_kl:
            raise OpcdError(
                f"step 1: the student without the context is already within {kl:.2g} nats/token of the teacher "
                f"(loss.min_kl={cfg.loss.min_kl:g}): the context changes nothing for this model, so there is nothing "
                "to distill. Check that it reaches the teacher (data.placement), or set loss.min_kl=0 to train anyway"
            )
        began = time.perf_counter()
        ranks.sum_grads(params)  # every rank now holds the whole step's gradient
        grad_norm = torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm if t.max_grad_norm > 0 else math.inf)
        if hasattr(grad_norm, "full_tensor"):  # FSDP: a replicated DTensor
            grad_norm = grad_norm.full_tensor()
        finite = bool(torch.isfinite(grad_norm))
        lr = t.lr * min(1.0, step / t.warmup_steps) if t.warmup_steps else t.lr
        for group in optimizer.param_groups:
            group["lr"] = lr
        if finite:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        teacher.after_step()
        timers["optimizer"] = time.perf_counter() - began
        step_time = time.perf_counter() - step_began

        metrics = {
            "loss/value": sums["loss"],
            "kl/reverse_full": kl,
            "kl/topk_mass": sums["topk_mass"] / max(total_tokens, 1),
            "rollout/response_tokens": total_tokens / sequences,
            "rollout/truncated": unfinished / sequences,
            "optim/grad_norm": float(grad_norm),
            "optim/lr": lr,
            "optim/skipped": float(not finite),
            **{f"time/{k}": v for k, v in timers.items()},
            "time/other": step_time - sum(timers.values()),
            "time/step": step_time,
        }
        if not mode.uses_teacher_logits:
            del metrics["kl/reverse_full"]
        if game:
            metrics["rollout/success"] = wins / len(idx)
            metrics["rollout/turns"] = sequences / len(idx)
        if log is not None:
            log.log(step, metrics)
        leaking = cfg.loss.estimator == "topk" and mode.sampler == "student" and metrics["kl/topk_mass"] < 0.5
        if leaking and not warned and ranks.main:
            warned = True
            tqdm.write(
                f"opcd: warning: step {step}: the student keeps only {metrics['kl/topk_mass']:.0%} of its probability "
                "in its top-k; the partial-sum top-k loss is lowered by spreading mass outside it (degenerate text). "
                "Use loss.estimator=tail or full, or a lower train.lr."
            )
        bar.set_postfix(kl=f"{metrics.get('kl/reverse_full', float('nan')):.4f}", loss=f"{sums['loss']:.4f}")
        if (t.save_every and step % t.save_every == 0) or step == t.steps:
            weights_now = ranks.full_state_dict(student) if ranks.fsdp else None  # gathered by every rank together
            trainer_state = {
                "step": step,
                "optimizer": ranks.full_optimizer_state(student, optimizer) if ranks.fsdp else optimizer.state_dict(),
                "rng": checkpoint.rng_state(),
                "teacher": teacher.state_dict(),
                "config": cfg.to_dict(),
                "fsdp": ranks.fsdp,
                "software": software(),
            }
            if ranks.main:
                checkpoint.save(
                    run_dir, step, student, tokenizer, trainer_state, keep=t.keep_checkpoints, state_dict=weights_now
                )
            del weights_now, trainer_state  # under FSDP: full CPU copies, 6x the model; gone before the next step
            ranks.barrier()
    if log is not None:
        log.close()
    return run_dir
