"""`tenfold train`: QLoRA context extension; `train()` reads top to bottom as a torchtune recipe does.

setup (data, model with the new RoPE base, optimizer, trackers) -> train_steps (explicit loss step in
forward_backward, gradient accumulation, checkpoints, held-out loss) -> cleanup (adapter + summary). An explicit
loop rather than the transformers Trainer: the loss needs the decoder's hidden states, not logits; a NaN must name
the batch's records; and a resumed run must follow the exact batch plan to reach the same weights.
accelerate supplies the processes (DDP, FSDP, DeepSpeed by its config), autocast and the experiment trackers.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import os
import random
import resource
import shutil
import signal
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, gather_object, set_seed
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import get_scheduler

from tenfold.errors import RecipeError, UserError
from tenfold.io import write_atomic, write_error
from tenfold.models import load_tokenizer
from tenfold.recipe import Recipe, dump_recipe, recipe_to_dict
from tenfold.train import sequence_parallel, tracking
from tenfold.train.batches import batch_plan, collate, encode_files
from tenfold.train.distributed import (
    full_optimizer_state,
    full_trainable_state,
    is_sharded,
    load_full_state,
    make_accelerator,
    reset_accelerator_state,
    set_accumulation,
    sharding_report,
)
from tenfold.train.loss import CausalLMLoss
from tenfold.train.model import load_model_for_training, mixed_precision


class NonFiniteLossError(RuntimeError):
    pass


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during the steps: the last finished step is checkpointed; the same command resumes from it."""


def offload_activations(recipe: Recipe, device: torch.device):
    """With gradient checkpointing, what the forward saves is each layer's input: at 80K tokens and
    32 layers of 4096 that is 21 GB of bf16; this moves it to (pinned) CPU memory until backward."""
    if not recipe.model.offload_activations:
        return nullcontext()
    return torch.autograd.graph.save_on_cpu(pin_memory=device.type == "cuda")


def build_optimizer(params: list[torch.nn.Parameter], recipe: Recipe) -> torch.optim.Optimizer:
    """AdamW, fused: the default multi-tensor AdamW makes temporaries as large as the trained parameters
    (4 GB at Llama-3-8B's fp32 embedding copy), which set the step's peak at short context."""
    return torch.optim.AdamW(params, lr=recipe.train.learning_rate, weight_decay=recipe.train.weight_decay,
                             fused=True)


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


@dataclass
class Run:
    """One training run as setup() builds it: what the steps and cleanup() read and update."""
    recipe: Recipe
    accelerator: Accelerator
    out: Path
    tokenizer: Any
    rows: Any  # the encoded records (a datasets.Dataset)
    plan: list  # plan[step][data-parallel rank] = that rank's micro-batches (lists of row indices)
    weights_per_record: list[float]
    model: torch.nn.Module
    loss_model: torch.nn.Module  # CausalLMLoss around the model, as accelerate prepared it
    optimizer: Any
    scheduler: Any
    trainable: list[torch.nn.Parameter]
    sharded: bool
    rope: dict
    data_counts: dict
    start_step: int
    totals: dict  # tokens_seen, loss_tokens, losses, held_out (the evaluations so far): carried in checkpoints
    held_out: tuple | None = None  # data.eval_files encoded: (rows, counts)


def train(recipe: Recipe, overwrite: bool = False) -> dict:
    """Train the recipe's adapter into recipe.train.output_dir; resumes from its last checkpoint.

    A run already finished there with the same recipe is returned as it is; overwrite=True trains from step 0.
    """
    reset_accelerator_state()  # a second train() in this process may want another precision
    out = Path(recipe.train.output_dir)
    accelerator = make_accelerator(mixed_precision(recipe), tracking.tracker_names(recipe.train.report_to),
                                   str(out / "tracking"))
    if accelerator.distributed_type == DistributedType.DEEPSPEED and recipe.train.save_every:
        raise RecipeError("train.save_every: tenfold writes no checkpoints under DeepSpeed (its engine holds the "
                          "optimizer state); set train.save_every 0, or use FSDP2 (recipes/accelerate/fsdp2.yaml)")
    if overwrite:
        if accelerator.is_main_process:
            clear_run(out)
        accelerator.wait_for_everyone()
    elif (finished := finished_run(out, recipe)) is not None:
        accelerator.print(f"{out} is already trained with this recipe: adapter in {out / 'adapter'}, summary in "
                          f"{out / 'summary.json'}; nothing to do (--overwrite trains it again)")
        return {**finished, "already_finished": True}
    run = setup(recipe, accelerator, out)
    seconds, tokens = train_steps(run)
    return cleanup(run, seconds, tokens)


def setup(recipe: Recipe, accelerator: Accelerator, out: Path) -> Run:
    """Seeds, data and its batch plan, the model with the new RoPE base, optimizer and schedule, and the
    state of the last checkpoint in out, if any."""
    t = recipe.train
    set_seed(t.seed)  # Python's, numpy's and torch's generators (every device's)
    tokenizer = load_tokenizer(recipe.model.name, recipe.model.trust_remote_code)
    with accelerator.main_process_first():
        rows, data_counts = encode_files(recipe, tokenizer, out)
        held_out = encode_files(recipe, tokenizer, out, held_out=True) if recipe.data.eval_files else None
    lengths = rows.with_format(None)["length"]
    # Sequence parallel: groups of train.sequence_parallel processes share each micro-batch, a slice each.
    sp = t.sequence_parallel
    if accelerator.num_processes % sp:
        raise RecipeError(f"train.sequence_parallel {sp} does not divide the {accelerator.num_processes} processes")
    plan = batch_plan(lengths, recipe, accelerator.num_processes // sp)
    if not plan:
        raise UserError(f"{len(lengths)} usable records do not fill one step of train.batch_size {t.batch_size}")

    model, rope = load_model_for_training(recipe, accelerator.device)
    if sp > 1:
        sequence_parallel.setup(model, sp)
    # The engine owns the accumulation boundary (DeepSpeed steps its optimizer there): one optimizer step is
    # this many micro-batches on each process, the same on all of them (batch_plan).
    set_accumulation(accelerator, len(plan[0][0]), t.micro_batch_size, t.max_grad_norm)
    # accelerate's FSDP2 path rebinds the optimizer to the sharded parameters it creates, so the two are
    # prepared together; the clipping list is read from the model after wrapping, never before.
    optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], recipe)
    loss_model, optimizer = accelerator.prepare(CausalLMLoss(model, t.loss_chunk_size), optimizer)
    scheduler = get_scheduler(t.lr_schedule, optimizer, num_warmup_steps=t.warmup_steps,
                              num_training_steps=len(plan))
    sharded = is_sharded(model)
    if sharded:
        accelerator.print(f"{accelerator.distributed_type.value} over {accelerator.num_processes} processes: "
                          f"{sharding_report(model)}")
    start_step, totals = 0, {"tokens_seen": 0, "loss_tokens": 0.0, "losses": [], "held_out": []}
    if (checkpoint := latest_checkpoint(out)) is not None:
        start_step, totals = load_checkpoint(checkpoint, model, optimizer.optimizer, scheduler, recipe)
        totals.setdefault("held_out", [])
        accelerator.print(f"resuming from {checkpoint} at step {start_step}")
    if accelerator.is_main_process:
        try:
            out.mkdir(parents=True, exist_ok=True)
            dump_recipe(recipe, out / "recipe.yaml")
        except OSError as e:
            raise write_error(out / "recipe.yaml", e, "train.output_dir") from None
    tracking.start_trackers(accelerator, recipe, out)
    return Run(recipe, accelerator, out, tokenizer, rows, plan, rows.with_format(None)["loss_weight"], model,
               loss_model, optimizer, scheduler, [p for p in loss_model.parameters() if p.requires_grad], sharded,
               rope, data_counts, start_step, totals, held_out)


def train_steps(run: Run) -> tuple[float, int]:
    """The optimizer steps from run.start_step to the end of the plan; returns (seconds, tokens) of these."""
    t, accelerator = run.recipe.train, run.accelerator
    boundary = {"step": run.start_step, "rng": rng_state(), "saving": False}  # the last finished step
    progress = tqdm(total=len(run.plan), initial=run.start_step, desc="train",
                    disable=not accelerator.is_main_process)
    # Ctrl-C reaches each process on its own: only an unsharded model can be saved from one of them.
    with progress, checkpoint_on_interrupt(boundary, accelerator.is_main_process and not run.sharded, run.out,
                                           run.model, run.optimizer.optimizer, run.scheduler, run.totals,
                                           run.recipe):
        seconds, tokens = 0.0, 0  # of the optimizer steps alone: held-out passes and checkpoints not counted
        evaluate_if_due(run, run.start_step)  # step 0's, before any training (or one a kill left undone)
        for step in range(run.start_step, len(run.plan)):
            started, lr = time.perf_counter(), run.scheduler.get_last_lr()[0]  # the lr this step uses
            step_loss, step_weight, step_tokens = forward_backward(run, step)
            if t.max_grad_norm > 0:
                accelerator.clip_grad_norm_(run.trainable, t.max_grad_norm)
            with deferred_interrupt():
                run.optimizer.step()
                run.scheduler.step()
                run.optimizer.zero_grad(set_to_none=True)
                tokens += step_tokens
                run.totals["tokens_seen"] += step_tokens
                run.totals["loss_tokens"] += step_weight
                run.totals["losses"].append(step_loss)
                boundary.update(step=step + 1, rng=rng_state())
            step_seconds = time.perf_counter() - started
            seconds += step_seconds
            progress.update(1)
            report_step(run, step + 1, step_loss, lr, step_tokens / step_seconds, tokens / seconds, progress)
            evaluate_if_due(run, step + 1)
            if t.save_every and (step + 1) % t.save_every == 0 and step + 1 < len(run.plan):
                accelerator.wait_for_everyone()
                boundary["saving"] = True
                save_checkpoint(run.out, step + 1, run.model, run.optimizer.optimizer, run.scheduler, run.totals,
                                run.recipe, accelerator.is_main_process)
                boundary["saving"] = False
    return seconds, tokens


def report_step(run: Run, step: int, loss: float, lr: float, step_tokens_per_s: float, tokens_per_s: float,
                progress) -> None:
    """The finished step to the trackers (every step) and the progress bar (every train.log_every)."""
    peak = peak_memory_gb(run.accelerator.device)  # the run's peak so far
    run.accelerator.log({"train/loss": loss, "train/learning_rate": lr, "train/tokens_per_s": step_tokens_per_s,
                         "train/peak_memory_gb": peak}, step=step)
    if step % run.recipe.train.log_every == 0 or step == len(run.plan):
        progress.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_s:.0f}", mem_gb=f"{peak:.2f}")


def evaluate_if_due(run: Run, step: int) -> None:
    """The held-out loss at step 0, every train.eval_every steps and after the last, once per step."""
    every, history = run.recipe.train.eval_every, run.totals["held_out"]
    due = step == len(run.plan) or (every and step % every == 0)
    if run.held_out is None or not due or any(e["step"] == step for e in history):
        return
    rows = run.held_out[0]
    history.append({"step": step, **tracking.held_out_loss(run.loss_model, run.accelerator, rows,
                                                           run.tokenizer.pad_token_id, run.recipe)})
    tracking.report_held_out(run.accelerator, run.out, held_out_summary(run), step)


def held_out_summary(run: Run) -> dict | None:
    if run.held_out is None:
        return None
    return {"files": run.recipe.data.eval_files, "data": run.held_out[1],
            "buckets": tracking.bucket_labels(run.recipe.data.max_length), "evaluations": run.totals["held_out"]}


def forward_backward(run: Run, step: int) -> tuple[float, float, int]:
    """The step's micro-batches on this process, gradients accumulated; returns the step's loss (the mean
    over every process's labels), its loss weight and its token count."""
    accelerator, sp = run.accelerator, run.recipe.train.sequence_parallel
    micro_batches = run.plan[step][accelerator.process_index // sp]
    # Normalize by the loss weight of the whole step on all processes: the plan is known to every
    # process, so the mean over the effective batch is exact without communication.
    step_weight = sum(run.weights_per_record[i] for mbs in run.plan[step] for mb in mbs for i in mb)
    local_loss, local_tokens = torch.zeros((), device=accelerator.device), 0
    for mb in micro_batches:
        batch = {name: x.to(accelerator.device) for name, x in
                 collate([run.rows[i] for i in mb], run.tokenizer.pad_token_id).items()}
        if sp > 1:
            batch = sequence_parallel.shard_batch(batch, run.tokenizer.pad_token_id)
        local_tokens += int(batch["attention_mask"].sum())
        # accumulate(): no gradient sync before the last micro-batch (DDP, FSDP), the engine's own
        # boundary under DeepSpeed; backward divides by the accumulation steps, which cancel here. The
        # engines average gradients over all processes, sequence-parallel slices included.
        with accelerator.accumulate(run.loss_model), accelerator.autocast(), \
                offload_activations(run.recipe, accelerator.device):
            loss_sum = run.loss_model(**batch)
            accelerator.backward(loss_sum * (accelerator.num_processes * len(micro_batches) / step_weight))
        local_loss += loss_sum.detach()
    step_loss = accelerator.reduce(local_loss, reduction="sum").item() / step_weight
    if not math.isfinite(step_loss):
        ids = [run.rows[i]["id"] for mbs in run.plan[step] for mb in mbs for i in mb]
        raise NonFiniteLossError(f"loss is {step_loss} at step {step + 1}; records in this batch: {ids}. "
                                 f"The last good checkpoint is kept in {run.out / 'checkpoints'}.")
    step_tokens = int(accelerator.reduce(torch.tensor(local_tokens, device=accelerator.device), "sum"))
    return step_loss, step_weight, step_tokens


def cleanup(run: Run, seconds: float, tokens: int) -> dict:
    """Check the replicas agree, write the adapter and summary from rank 0, release the processes."""
    accelerator = run.accelerator
    weights = full_trainable_state(run.model)  # whole on rank 0 (sharded or not), {} elsewhere
    # Every replica must end with the same weights; a desynchronized one fails here, not silently. Shards
    # differ by design: their whole is checked on rank 0 only.
    local = None if run.sharded and not accelerator.is_main_process else weights_fingerprint(
        weights if run.sharded else trainable_state(run.model))
    replicas = [r for r in gather_object([local]) if r is not None]
    if len(set(replicas)) != 1:
        raise RuntimeError(f"processes finished with different weights: {replicas}")
    losses = run.totals["losses"]
    summary = {
        "steps": len(run.plan), "resumed_from_step": run.start_step, "tokens_seen": run.totals["tokens_seen"],
        "final_loss": losses[-1] if losses else None, "first_loss": losses[0] if losses else None,
        "losses": losses, "data": run.data_counts, "rope": run.rope,
        "peak_memory_gb": round(peak_memory_gb(accelerator.device), 3),
        "tokens_per_s": round(tokens / seconds, 1) if seconds > 0 else None,
        "processes": accelerator.num_processes, "distributed": str(accelerator.distributed_type.value),
        "sharded": run.sharded, "mixed_precision": accelerator.mixed_precision, "weights_sha256": replicas[0],
        "held_out": held_out_summary(run),
    }
    if accelerator.is_main_process:
        try:  # the checkpoints stay until both are written: a rerun resumes from the last one
            save_adapter(run.out / "adapter", run.model, weights, run.tokenizer, run.recipe, run.rope)
            write_atomic(run.out / "summary.json", json.dumps(summary, indent=2) + "\n", "train.output_dir")
        except OSError as e:
            raise write_error(run.out, e, "train.output_dir") from None
        shutil.rmtree(run.out / "checkpoints", ignore_errors=True)
    # Free the DDP wrapper while every process is alive and its process group still registered: freed
    # after end_training, the last reference to a gloo group can hang in its destructor once a peer has exited.
    run.loss_model = None
    accelerator.free_memory()
    gc.collect()
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary


def finished_run(out: Path, recipe: Recipe) -> dict | None:
    """The summary of a run finished in out with this recipe; a finished run with other settings is refused."""
    summary, meta = out / "summary.json", out / "adapter" / "tenfold.json"
    if not (summary.is_file() and meta.is_file()) or json.loads(summary.read_text()).get("in_progress"):
        return None
    changed = changed_settings(json.loads(meta.read_text())["recipe"], recipe_to_dict(recipe))
    if changed:
        raise UserError(f"{out} holds a finished run with other settings ({', '.join(changed)}); "
                        f"use a new train.output_dir, or --overwrite to train it again")
    return json.loads(summary.read_text())


def clear_run(out: Path) -> None:
    """What a run writes besides the data cache, so that overwrite=True starts from step 0."""
    shutil.rmtree(out / "adapter", ignore_errors=True)
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    shutil.rmtree(out / "tracking", ignore_errors=True)
    for name in ("summary.json", "held_out_loss.png"):
        (out / name).unlink(missing_ok=True)


def changed_settings(saved: dict, now: dict) -> list[str]:
    """Recipe keys that change the weights and differ between two recipe dicts."""
    return sorted(f"{s}.{k}" for s in now for k in now[s] if now[s][k] != saved.get(s, {}).get(k)
                  and f"{s}.{k}" not in ("train.log_every", "train.save_every", "train.output_dir", "train.report_to",
                                         "train.eval_every", "data.eval_files"))


def save_adapter(path: Path, model, weights: dict, tokenizer, recipe: Recipe, rope: dict) -> None:
    """peft's adapter (LoRA + fully trained modules, from the whole trainable `weights`) plus what merge needs
    to rebuild the model."""
    # A tied head (lm_head following the trained embed_tokens) shares its parameter, which named_parameters lists
    # once; peft looks it up under the head's own name too.
    canonical = {id(p): n for n, p in model.named_parameters()}
    weights = {n: weights[canonical[id(p)]] for n, p in model.named_parameters(remove_duplicate=False)
               if canonical[id(p)] in weights}
    model.save_pretrained(path, state_dict=weights)
    tokenizer.save_pretrained(path)
    (path / "tenfold.json").write_text(json.dumps({
        "base_model": recipe.model.name, "rope_parameters": rope, "max_length": recipe.data.max_length,
        "recipe": recipe_to_dict(recipe),
    }, indent=2) + "\n")


# ---- checkpoints: only the trainable weights, the optimizer and the RNG, written atomically ----

def weights_fingerprint(weights: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(weights.items()):
        digest.update(name.encode())
        digest.update(tensor.float().cpu().numpy().tobytes())
    return digest.hexdigest()


def trainable_state(model) -> dict[str, torch.Tensor]:
    """This process's trainable tensors (a shard of each under FSDP)."""
    return {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(out: Path, step: int, model, optimizer, scheduler, totals: dict, recipe: Recipe,
                    write: bool = True) -> None:
    """Gather the whole trainable state and optimizer state (every process calls this), `write` on one."""
    weights, optimizer_state = full_trainable_state(model), full_optimizer_state(model, optimizer)
    if not write:
        return
    root = out / "checkpoints"
    tmp = root / f".step-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:  # a full disk inside torch.save or safetensors is their own error type, not an OSError
        tmp.mkdir(parents=True)
        save_file(weights, tmp / "trainable.safetensors")
        torch.save({"optimizer": optimizer_state, "scheduler": scheduler.state_dict(), **rng_state()},
                   tmp / "state.pt")
        (tmp / "progress.json").write_text(json.dumps({"step": step, "totals": totals,
                                                       "recipe": recipe_to_dict(recipe)}))
        os.replace(tmp, root / f"step-{step}")  # atomic: a kill leaves the old checkpoint or the new one
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_error(root / f"step-{step}", e, "train.output_dir") from None
    for old in root.glob("step-*"):
        if old.name != f"step-{step}":
            shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(out: Path) -> Path | None:
    done = sorted((p for p in (out / "checkpoints").glob("step-*") if p.is_dir()), key=checkpoint_step)
    return done[-1] if done else None


def load_checkpoint(path: Path, model, optimizer, scheduler, recipe: Recipe) -> tuple[int, dict]:
    progress = json.loads((path / "progress.json").read_text())
    changed = changed_settings(progress["recipe"], recipe_to_dict(recipe))
    if changed:
        raise UserError(f"{path} was written by a run with other settings ({', '.join(changed)}); "
                        f"resume with the same recipe, or use a new train.output_dir")
    weights = load_file(path / "trainable.safetensors")
    if set(weights) != set(trainable_state(model)):
        raise ValueError(f"{path} does not match this model's trainable weights")
    state = torch.load(path / "state.pt", weights_only=False)
    load_full_state(model, optimizer, weights, state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state)
    return progress["step"], progress["totals"]


def rng_state() -> dict:
    return {"torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "python_rng": random.getstate(), "numpy_rng": np.random.get_state()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    random.setstate(state["python_rng"])
    np.random.set_state(state["numpy_rng"])


# ---- Ctrl-C: keep the last finished step, never a half-accumulated one ----

@contextmanager
def deferred_interrupt():
    """Hold Ctrl-C while the optimizer steps: weights, optimizer, scheduler and counters move together."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    caught = []
    signal.signal(signal.SIGINT, lambda *_: caught.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if caught:
        raise KeyboardInterrupt


@contextmanager
def checkpoint_on_interrupt(boundary: dict, main_process: bool, out: Path, model, optimizer, scheduler,
                            totals: dict, recipe: Recipe):
    """On Ctrl-C, checkpoint boundary["step"] (unless it is on disk or the interrupt came from saving one)."""
    try:
        yield
    except KeyboardInterrupt:
        kept = latest_checkpoint(out)
        kept_step = checkpoint_step(kept) if kept else 0
        if main_process and not boundary["saving"] and boundary["step"] > kept_step:
            set_rng_state(boundary["rng"])  # the RNG as the step finished, not as the interrupted one left it
            save_checkpoint(out, boundary["step"], model, optimizer, scheduler, totals, recipe)
        raise TrainingInterrupted(f"training interrupted: {kept_checkpoint(out)}; run the same command again "
                                  f"to resume") from None


def checkpoint_step(path: Path) -> int:
    return int(path.name.split("-")[1])


def kept_checkpoint(out: str | Path) -> str:
    """What a resumed run starts from, in words."""
    kept = latest_checkpoint(Path(out))
    if kept is None:
        return "no checkpoint kept (no step had finished), so the next run starts from step 0"
    return f"checkpoint {kept} kept (step {checkpoint_step(kept)})"
