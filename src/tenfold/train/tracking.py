"""What a run reports while it trains: each optimizer step's numbers to accelerate's experiment trackers
(`train.report_to`), and the held-out loss by position (`data.eval_files`) to the trackers, to summary.json and
to a PNG, at step 0 and every `train.eval_every` steps (with eval_every 0: once, at the end).

The held-out loss is the weighted next-token loss of the held-out records (the weights their encoding gives,
as in training), overall and in POSITION_BUCKETS equal buckets of data.max_length, by the position of the
predicted token: at data.max_length 81920, buckets of 10240 positions.
"""

from __future__ import annotations

import json
from pathlib import Path

import bitsandbytes as bnb
import torch

from tenfold.errors import UserError
from tenfold.io import write_atomic
from tenfold.recipe import Recipe, recipe_to_dict
from tenfold.train import sequence_parallel
from tenfold.train.batches import collate

POSITION_BUCKETS = 8
PROJECT = "tenfold"  # the trackers' project (wandb's, mlflow's experiment); the run is named after the output dir


def tracker_names(report_to: list[str]) -> list[str]:
    """train.report_to as accelerate's log_with. A named tracker whose package is missing is a one-line error:
    accelerate itself would leave it out without a word."""
    if not report_to:
        return []
    from accelerate.tracking import get_available_trackers

    available = {str(t.value) for t in get_available_trackers()}
    missing = [name for name in report_to if name != "all" and name not in available]
    if missing:
        raise UserError(f"train.report_to: {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not "
                        f"installed; pip install {' '.join(missing)} (or leave it out of train.report_to)")
    return report_to


def start_trackers(accelerator, recipe: Recipe, out: Path) -> None:
    """Every tracker's run, its config the recipe's keys; local files under out/tracking (tensorboard's and aim's
    by accelerate's logging_dir, wandb's and dvclive's by their own dir argument)."""
    if not accelerator.log_with:
        return
    if accelerator.is_main_process:
        (out / "tracking").mkdir(parents=True, exist_ok=True)
    config = {f"{section}.{key}": value if isinstance(value, (bool, int, float, str)) else str(value)
              for section, values in recipe_to_dict(recipe).items() for key, value in values.items()}
    accelerator.init_trackers(PROJECT, config=config, init_kwargs={
        "wandb": {"dir": str(out / "tracking"), "name": out.name}, "dvclive": {"dir": str(out / "tracking")}})


def position_buckets(max_length: int) -> list[tuple[int, int]]:
    """[start, end) of each position bucket."""
    width = -(-max_length // POSITION_BUCKETS)
    return [(start, min(start + width, max_length)) for start in range(0, max_length, width)]


def bucket_labels(max_length: int) -> list[str]:
    return [f"{start}-{end - 1}" for start, end in position_buckets(max_length)]


def held_out_loss(loss_model, accelerator, rows, pad_token_id: int, recipe: Recipe) -> dict:
    """The held-out rows' loss overall and by position bucket, in eval mode without gradients (every module's
    mode as it was after).

    Each data-parallel group of processes takes every groups-th micro-batch. Every process runs the same number
    of forwards (FSDP and DeepSpeed gather parameters together): one with no batch left repeats the first and
    counts it zero. The sums over all processes (sequence-parallel slices included) are the whole set's."""
    t, device = recipe.train, accelerator.device
    groups, group = accelerator.num_processes // t.sequence_parallel, accelerator.process_index // t.sequence_parallel
    batches = [list(range(i, min(i + t.micro_batch_size, len(rows)))) for i in range(0, len(rows), t.micro_batch_size)]
    buckets = position_buckets(recipe.data.max_length)
    width, n_buckets = buckets[0][1], len(buckets)
    losses = torch.zeros(n_buckets, dtype=torch.float64, device=device)
    weights = torch.zeros_like(losses)
    modes = [(module, module.training) for module in loss_model.modules()]
    loss_model.eval()
    # bitsandbytes repacks a 4-bit layer's weights in place for CPU inference the first time it runs in eval
    # mode (the steps after would train on the repacked weights; it fails on widths under its block): its
    # layers have no dropout or other eval-mode behaviour, so they stay in train mode.
    for module in loss_model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.train()
    try:
        with torch.no_grad():
            for first in range(0, len(batches), groups):
                mine = first + group
                batch = {name: x.to(device) for name, x in
                         collate([rows[i] for i in batches[mine if mine < len(batches) else 0]], pad_token_id).items()}
                positions = torch.arange(batch["input_ids"].shape[1], device=device).expand_as(batch["input_ids"])
                if t.sequence_parallel > 1:
                    batch = sequence_parallel.shard_batch(batch, pad_token_id)
                    positions = batch["position_ids"] + 1  # the weights are the shifted targets'
                bucket = (positions // width).clamp(max=n_buckets - 1)
                masks = torch.stack([(bucket == b) & (positions > 0) for b in range(n_buckets)]).float()
                with accelerator.autocast():
                    sums = loss_model(**batch, weightings=masks)
                counted = float(mine < len(batches))
                losses += sums.double() * counted
                weights += (masks * batch["token_weights"]).sum(dim=(1, 2)).double() * counted
    finally:
        for module, training in modes:
            module.training = training
    losses, weights = (accelerator.reduce(x, reduction="sum").tolist() for x in (losses, weights))
    return {"loss": sum(losses) / sum(weights),
            "loss_by_position": [loss / w if w > 0 else None for loss, w in zip(losses, weights)]}


def report_held_out(accelerator, out: Path, held_out: dict, step: int) -> None:
    """The latest evaluation to the trackers; the whole history to out/summary.json (marked in progress until
    the run's own summary replaces it) and to the PNG, so a killed run keeps every evaluation so far."""
    latest = held_out["evaluations"][-1]
    values = {f"held_out/loss_{label}": loss for label, loss in zip(held_out["buckets"], latest["loss_by_position"])
              if loss is not None}
    accelerator.log({"held_out/loss": latest["loss"], **values}, step=step)
    if accelerator.is_main_process:
        write_atomic(out / "summary.json", json.dumps({"in_progress": True, "step": step, "held_out": held_out},
                                                      indent=2) + "\n", "train.output_dir")
        plot_held_out(held_out, out / "held_out_loss.png", out.name)


def plot_held_out(held_out: dict, path: Path, title: str) -> Path:
    """Loss by position, one line per evaluation, darker to lighter as training goes on."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure  # no pyplot: no backend or global figure state involved

    evaluations = held_out["evaluations"]
    fig = Figure(figsize=(8, 5))
    ax = fig.subplots()
    starts = [int(label.split("-")[0]) for label in held_out["buckets"]]
    colors = colormaps["viridis"]
    for i, evaluation in enumerate(evaluations):
        points = [(x, y) for x, y in zip(starts, evaluation["loss_by_position"]) if y is not None]
        label = f"step {evaluation['step']}: {evaluation['loss']:.3f}"
        ax.plot(*zip(*points), marker="o", color=colors(i / max(1, len(evaluations) - 1)),
                label=label if len(evaluations) <= 12 or i in (0, len(evaluations) - 1) else None)
    ax.set_xticks(starts, held_out["buckets"], rotation=30, fontsize=8)
    ax.set_xlabel("position of the predicted token")
    ax.set_ylabel("held-out loss (nats per token)")
    ax.set_title(f"{title}: held-out loss by position")
    ax.grid(alpha=0.3)
    ax.legend(title="evaluation: overall loss", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
