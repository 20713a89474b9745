"""The training loop, top to bottom: sample -> score -> loss -> optimizer step -> log/save.

Per step: draw `prompts_per_step` items of the rollout source (a seeded permutation per epoch, so any step's batch is
known from the seed alone), sample responses (the student for OPCD, the teacher with context for the off-policy
baselines), score the same response tokens under the teacher's prompt, and backpropagate the per-token loss
micro-batch by micro-batch. The loss weights use the token/sequence counts of the *whole* step, so the update does not
depend on the micro-batch size. Every step reseeds from (seed, step), which together with the saved optimizer state
makes resume exact. What the rollouts are (prompt rows, game turns) is the source's business, not the loop's.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from contextlib import ExitStack, nullcontext
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

from opcd.config import Config, TrainConfig
from opcd.core import checkpoint, objectives
from opcd.core.heap import resident_bytes
from opcd.core.losses import backward_chunked, reduction_weights, reward_to_go
from opcd.core.rollout import HFSampler, Policy, Rollout, RolloutSource, autocast, step_seed
from opcd.core.scoring import make_batch, response_hidden, response_logits_whole
from opcd.core.setup import Run, set_up
from opcd.core.signal import GradientParts, signal_share
from opcd.errors import OpcdError
from opcd.versions import software


def batch_indices(n_examples: int, batch: int, seed: int, step: int) -> list[int]:
    """Examples of step `step` (1-based): a window over back-to-back seeded permutations of the data."""
    out = []
    for i in range((step - 1) * batch, step * batch):
        epoch, j = divmod(i, n_examples)
        perm = torch.randperm(n_examples, generator=torch.Generator().manual_seed(step_seed(seed, -1 - epoch)))
        out.append(int(perm[j]))
    return out


def teacher_count(run: Run, step: int, items: int) -> int:
    """How many of this rank's items the teacher answers at `step` (`loss.teacher_share`): the first
    round(share × the step's items) of the whole step, so the split does not depend on the number of processes."""
    whole = math.floor(objectives.teacher_share(run.cfg.loss, step, run.cfg.train.steps) * items + 0.5)
    return max(0, min(run.mine.stop, whole) - run.mine.start)


def sample(run: Run, indices: list[int], seed: int, first_chunk: int, n: int = 0) -> tuple[list[Rollout], dict]:
    """The rollout stage: the student answers its own prompts (vLLM or HF), or the teacher answers with context.
    With `loss.teacher_share`, the teacher answers this rank's first `n` items (`teacher_count`; its own seed)."""
    on_policy = run.mode.sampler == "student"
    rollouts, counts = _draw(run, indices[n:], seed, first_chunk, on_policy) if n < len(indices) else ([], {})
    if run.cfg.loss.teacher_share:
        theirs, more = _draw(run, indices[:n], step_seed(seed, -1), first_chunk, False) if n else ([], {})
        rollouts = [replace(r, by_teacher=True) for r in theirs] + rollouts
        counts = {k: counts.get(k, 0) + more.get(k, 0) for k in {**counts, **more}} | {"teacher_share": n}
    return rollouts, counts


def _draw(run: Run, indices: list[int], seed: int, first_chunk: int, on_policy: bool):
    """One policy's rollouts for `indices`: the student (vLLM or HF) or the teacher with its context (HF)."""
    if on_policy and run.engine is not None:  # vLLM: the student's current weights go into the engine first
        run.engine.sync(run.student)
        return run.source.draw(Policy(run.engine, True), indices, seed, first_chunk, run.ranks.rank)
    with nullcontext(run.student) if on_policy else run.teacher.active() as model:
        sampler = HFSampler(
            model,
            run.cfg.rollout,
            run.eos,
            run.tokenizer.pad_token_id,
            run.cfg.model.dtype,
            synced=run.ranks.fsdp and on_policy,
            rows=None if on_policy else run.teacher.rows,
        )
        return run.source.draw(Policy(sampler, on_policy), indices, seed, first_chunk, run.ranks.rank)


def _diagnostics(sums: dict[str, float], mask: torch.Tensor, cfg: Config, kl: bool):
    """Per chunk, what the loss itself does not give: the full-vocabulary reverse KL (`kl`: unless the loss is that
    KL) and, for the top-k estimators, the student's mass inside its top-k (logged, never trained on); None when there
    is nothing to add."""
    temp, top_k = cfg.rollout.temperature, cfg.loss.top_k
    mass = objectives.uses_student_topk(cfg.loss)
    if not (kl or mass):
        return None

    @torch.no_grad()
    def on_chunk(s_logits, t_logits, pos):
        logp_s = torch.log_softmax(s_logits.float() / temp, -1)
        valid = mask[:, pos]
        if mass:
            top = logp_s.topk(min(top_k, logp_s.shape[-1]), -1).values.exp().sum(-1)
            sums["topk_mass"] += (top * valid).sum().item()
        if kl and t_logits is not None:
            logp_t = torch.log_softmax(t_logits.float() / temp, -1)
            sums["kl_full"] += ((logp_s.exp() * (logp_s - logp_t)).sum(-1) * valid).sum().item()

    return on_chunk


def _heads(run: Run, timers: dict[str, float]):
    """The student's and the teacher's output heads over hidden states (the teacher's time goes to its timer)."""
    head, dtype = run.student.get_output_embeddings(), run.cfg.model.dtype

    def student_head(hidden):
        if run.ranks.fsdp:  # the student's forward already ended in the head (FSDP gathers it with the root)
            return hidden
        with autocast(dtype, run.device):
            return head(hidden)

    def teacher_head(hidden):
        began = time.perf_counter()
        logits = run.teacher.head(hidden, dtype).to(run.device)  # a teacher on another device hands its logits over
        timers["teacher"] += time.perf_counter() - began
        return logits

    return student_head, teacher_head


def backward(
    run: Run, rollouts: list[Rollout], tokens: int, sequences: int, timers: dict, parts: GradientParts | None = None
) -> dict[str, float]:
    """Score and backpropagate this rank's rollouts micro-batch by micro-batch, weighted by the step's totals;
    returns this rank's sums of the loss and the diagnostics. `parts`, if given, measures each micro-batch's share."""
    cfg, pad = run.cfg, run.tokenizer.pad_token_id
    temp, dtype = cfg.rollout.temperature, cfg.model.dtype
    token_loss = objectives.token_loss(cfg.loss, temp)
    student_head, teacher_head = _heads(run, timers)
    sums: dict[str, float] = defaultdict(float)
    for start in range(0, len(rollouts), cfg.train.micro_batch_size):
        micro = rollouts[start : start + cfg.train.micro_batch_size]
        responses = [r.response for r in micro]
        s_batch = make_batch([r.student_prompt for r in micro], responses, pad).to(run.device)
        mask = s_batch.response_mask
        weights = reduction_weights(mask, cfg.loss.reduction, total_tokens=tokens, total_sequences=sequences)
        grad_weights = weights * run.ranks.loss_scale
        t_hidden = None
        if run.mode.uses_teacher_logits:
            began = time.perf_counter()
            prompts, prefixes = [r.teacher_prompt for r in micro], [r.teacher_prefix for r in micro]
            t_hidden = run.teacher.hidden(prompts, responses, prefixes, pad, dtype)
            timers["teacher"] += time.perf_counter() - began
        began, teacher_before = time.perf_counter(), timers["teacher"]
        with autocast(dtype, run.device):  # under FSDP: the logits themselves (see student_head)
            s_hidden = (response_logits_whole if run.ranks.fsdp else response_hidden)(run.student, s_batch)
        heads, ids = (student_head, teacher_head), s_batch.response_ids
        if parts is not None:
            parts.before()
        by_teacher = torch.tensor([r.by_teacher for r in micro], device=run.device)
        loss_fn = objectives.mixed_loss(cfg.loss, temp, by_teacher) if by_teacher.any() else token_loss
        kl_in_values = objectives.is_full_reverse_kl(cfg.loss) and not by_teacher.any()
        if objectives.needs_returns(cfg.loss):
            rewards = backward_chunked(
                s_hidden.detach(),
                t_hidden,
                *heads,
                ids,
                grad_weights,
                objectives.sampled_reward(temp),
                cfg.loss.chunk_size,
            )
            loss_fn = objectives.sampled_with_returns(reward_to_go(rewards, mask, cfg.loss.discount), temp)
        values = backward_chunked(
            s_hidden, t_hidden, *heads, ids, grad_weights, loss_fn, cfg.loss.chunk_size,
            on_chunk=_diagnostics(sums, mask, cfg, kl=not kl_in_values),
        )  # fmt: skip
        if parts is not None:
            parts.after()
        sums["loss"] += (values * weights).sum().item()
        if kl_in_values:  # the loss values are the KL itself: no second pass for it
            sums["kl_full"] += (values * mask).sum().item()
        timers["student"] += time.perf_counter() - began - (timers["teacher"] - teacher_before)
    return sums


def update(
    run: Run, step: int, parts: GradientParts | None = None, kl: float = math.inf
) -> tuple[float, float, bool, float]:
    """Sum the ranks' gradients, clip, set the step's learning rate (times the gradient's signal share, given the
    micro-batches' `parts`, and times `rate_by_kl` of the step's KL) and step AdamW unless the norm is non-finite;
    returns (grad norm, lr, whether the step was taken, signal share)."""
    t = run.cfg.train
    if parts is not None:  # every rank's parts, before the gradients are summed
        parts.squares, parts.count = run.ranks.sum([parts.squares, parts.count])
    run.ranks.sum_grads(run.params)  # every rank now holds the whole step's gradient
    grad_norm = torch.nn.utils.clip_grad_norm_(run.params, t.max_grad_norm if t.max_grad_norm > 0 else math.inf)
    if hasattr(grad_norm, "full_tensor"):  # FSDP: a replicated DTensor
        grad_norm = grad_norm.full_tensor()
    finite = bool(torch.isfinite(grad_norm))
    share = 1.0 if parts is None or not finite else signal_share(parts.squares, int(parts.count), float(grad_norm) ** 2)
    lr = lr_at(t, step) * share * rate_by_kl(t, kl)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    if finite:
        run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.teacher.after_step()
    return float(grad_norm), lr, finite, share


def lr_at(t: TrainConfig, step: int) -> float:
    """Step `step`'s (1-based) learning rate: linear warmup, then constant or decaying toward 0 at `t.steps`."""
    if t.warmup_steps and step <= t.warmup_steps:
        return t.lr * step / t.warmup_steps
    if t.lr_schedule == "constant":
        return t.lr
    span = max(1, t.steps - t.warmup_steps)
    done = min(1.0, (step - t.warmup_steps - 1) / span)  # 0 at the first step after warmup
    return t.lr * ((1 - done) if t.lr_schedule == "linear" else 0.5 * (1 + math.cos(math.pi * done)))


def rate_by_kl(t: TrainConfig, kl: float) -> float:
    """The share of the rate a step whose student is `kl` nats/token from the teacher takes: all of it at or above
    `train.full_rate_kl`, in proportion below (all of it where no KL is measured: `kl` infinite). The reverse KL's
    least value is 0, so a step with little left to close takes a step as small, in the spirit of Polyak's step size;
    AdamW's normalized step would otherwise take the full rate on what is mostly sampling noise (the null test,
    docs/results.md)."""
    if not t.full_rate_kl or not math.isfinite(kl):
        return 1.0
    return min(1.0, max(kl, 0.0) / t.full_rate_kl)


def _check_first_kl(run: Run, step: int, kl: float) -> None:
    if step == 1 and run.mode.uses_teacher_logits and kl < run.cfg.loss.min_kl:
        raise OpcdError(
            f"step 1: the student without the context is already within {kl:.2g} nats/token of the teacher "
            f"(loss.min_kl={run.cfg.loss.min_kl:g}): the context changes nothing for this model, so there is nothing "
            "to distill. Check that it reaches the teacher (data.placement), or set loss.min_kl=0 to train anyway"
        )


def _warn_topk_leak(run: Run, step: int, mass: float) -> bool:
    """Once per run: the partial-sum top-k loss is being lowered by mass leaving the top-k (degenerate text)."""
    if run.cfg.loss.estimator == "topk" and run.mode.sampler == "student" and mass < 0.5 and run.ranks.main:
        tqdm.write(
            f"opcd: warning: step {step}: the student keeps only {mass:.0%} of its probability "
            "in its top-k; the partial-sum top-k loss is lowered by spreading mass outside it (degenerate text). "
            "Use loss.estimator=tail or full, or a lower train.lr."
        )
        return True
    return False


def save(run: Run, step: int) -> None:
    """Checkpoint `step` (rank 0 writes; under FSDP every rank gathers the full weights and optimizer first)."""
    weights_now = run.ranks.full_state_dict(run.student) if run.ranks.fsdp else None
    trainer_state = {
        "step": step,
        "optimizer": (
            run.ranks.full_optimizer_state(run.student, run.optimizer) if run.ranks.fsdp else run.optimizer.state_dict()
        ),
        "rng": checkpoint.rng_state(),
        "teacher": run.teacher.state_dict(),
        "config": run.cfg.to_dict(),
        "inputs": checkpoint.inputs_identity(run.cfg),
        "fsdp": run.ranks.fsdp,
        "software": software(),
    }
    if run.ranks.main:
        checkpoint.save(
            run.run_dir, step, run.student, run.tokenizer, trainer_state,
            keep=run.cfg.train.keep_checkpoints, state_dict=weights_now,
        )  # fmt: skip
    del weights_now, trainer_state  # under FSDP: full CPU copies, 6x the model; gone before the next step
    run.ranks.barrier()


def train(
    cfg: Config, source: RolloutSource | None = None, *, resume: bool | str = False, progress: bool = True
) -> Path:
    """Train the student as `cfg` says, on rollouts from `source` (default: the rows of `data.prompts`); returns the
    run directory (checkpoints, metrics.jsonl, config.toml). `resume`: continue from the newest readable checkpoint
    (True: one must exist; "if-possible": start when there is none). The run directory is locked while it runs."""
    with ExitStack() as stack:
        return loop(set_up(cfg, source, resume, stack), progress)


def loop(run: Run, progress: bool = True) -> Path:
    """The steps of a set-up run, from the one after its resume point to `train.steps`."""
    cfg = run.cfg
    t, ranks, mine = cfg.train, run.ranks, run.mine
    warned = False
    steps = range(run.start_step + 1, t.steps + 1)
    bar = tqdm(
        steps,
        desc="opcd train",
        unit="step",
        disable=not (progress and ranks.main),
        initial=run.start_step,
        total=t.steps,
    )
    for step in bar:
        timers: dict[str, float] = defaultdict(float)
        step_began = time.perf_counter()
        torch.manual_seed(step_seed(t.seed, step))
        idx = batch_indices(run.source.size, t.prompts_per_step, t.seed, step)
        idx = [i for i in idx for _ in range(cfg.rollout.samples_per_prompt)]
        first_chunk = mine.start // (cfg.rollout.batch_size or (mine.stop - mine.start))

        teacher_n = teacher_count(run, step, len(idx))
        rollouts, counts = sample(run, idx[mine], step_seed(t.seed, step), first_chunk, teacher_n)
        timers["generate"] = time.perf_counter() - step_began
        local = [sum(len(r.response) for r in rollouts), sum(not r.finished for r in rollouts), len(rollouts)]
        tokens, unfinished, sequences, *counted = (int(v) for v in ranks.sum(local + list(counts.values())))

        parts = GradientParts(run.params) if t.lr_by_signal else None
        if parts is not None and len(rollouts) % t.micro_batch_size:
            raise OpcdError(
                f"train.lr_by_signal needs micro-batches of the same size: this process has {len(rollouts)} "
                f"rollouts a step; make train.micro_batch_size ({t.micro_batch_size}) divide it"
            )
        sums = backward(run, rollouts, tokens, sequences, timers, parts)
        names = ["loss", "kl_full", "topk_mass"]
        sums.update(zip(names, ranks.sum([sums[n] for n in names]), strict=True))
        kl = sums["kl_full"] / max(tokens, 1)
        _check_first_kl(run, step, kl)

        began = time.perf_counter()
        measured = kl if run.mode.uses_teacher_logits else math.inf  # sft measures no KL: the schedule's rate
        grad_norm, lr, finite, share = update(run, step, parts, measured)
        timers["optimizer"] = time.perf_counter() - began
        step_time = time.perf_counter() - step_began

        metrics = {
            "loss/value": sums["loss"],
            "kl/reverse_full": kl,
            "kl/topk_mass": sums["topk_mass"] / max(tokens, 1) if objectives.uses_student_topk(cfg.loss) else None,
            "rollout/response_tokens": tokens / sequences,
            "rollout/truncated": unfinished / sequences,
            "optim/grad_norm": grad_norm,
            "optim/lr": lr,
            **({"optim/signal": share} if parts is not None and finite else {}),
            **({"optim/rate_by_kl": rate_by_kl(t, measured)} if t.full_rate_kl and math.isfinite(measured) else {}),
            "optim/skipped": float(not finite),
            **{f"time/{k}": v for k, v in timers.items()},
            "time/other": step_time - sum(timers.values()),
            "time/step": step_time,
            **{f"rollout/{name}": n / len(idx) for name, n in zip(counts, counted, strict=True)},
            "memory/resident_gib": resident_bytes() / 2**30,
        }
        if not run.mode.uses_teacher_logits:
            del metrics["kl/reverse_full"]
        if metrics["kl/topk_mass"] is None:
            del metrics["kl/topk_mass"]
        if run.log is not None:
            run.log.log(step, metrics | run.watch.metrics(run, step))
            run.log.log_samples(step, run.watch.samples(run, step, rollouts))
        warned = warned or _warn_topk_leak(run, step, metrics.get("kl/topk_mass", 1.0))
        bar.set_postfix(kl=f"{metrics.get('kl/reverse_full', float('nan')):.4f}", loss=f"{sums['loss']:.4f}")
        if (t.save_every and step % t.save_every == 0) or step == t.steps:
            save(run, step)
    if run.log is not None:
        run.log.close()
    return run.run_dir
