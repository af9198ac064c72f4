"""train.report_to (accelerate's trackers, read back from tensorboard's files offline) and the held-out loss by
position (data.eval_files, train.eval_every) in the trackers, summary.json and the PNG."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from processes import WORKER, launch
from tenfold.errors import UserError
from tenfold.io import read_jsonl, write_jsonl
from tenfold.models import load_tokenizer
from tenfold.records import encode_record
from tenfold.toy import toy_records
from tenfold.train import loop
from tenfold.train.model import load_model_for_training

tensorboard = pytest.importorskip("tensorboard", reason="pip install tensorboard (in the dev extra)")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

SETTINGS = {"lora.dropout": 0.1, "train.report_to": "tensorboard", "train.eval_every": 2}  # dropout: see below
LEARNING_RATES = [2e-3, 1.5e-3, 1e-3, 5e-4]  # tiny_recipe's 2e-3, decayed linearly over its 4 steps


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    return write_jsonl(toy_records(6, seed=11, min_lines=4, max_lines=24), tmp_path_factory.mktemp("held") / "h.jsonl")


@pytest.fixture(scope="module")
def tracked_recipe(tiny_recipe_in, held_out, tmp_path_factory):
    out = tmp_path_factory.mktemp("tracked")
    return lambda **overrides: tiny_recipe_in(out, **{**SETTINGS, "data.eval_files": [str(held_out)], **overrides})


@pytest.fixture(scope="module")
def tracked_run(tracked_recipe):
    recipe = tracked_recipe()
    return recipe, loop.train(recipe), Path(recipe.train.output_dir)


def assert_same_evaluation(a: dict, b: dict, rel: float) -> None:
    assert a["step"] == b["step"] and a["loss"] == pytest.approx(b["loss"], rel=rel)
    assert [x is None for x in a["loss_by_position"]] == [x is None for x in b["loss_by_position"]]
    assert [x for x in a["loss_by_position"] if x is not None] == \
        pytest.approx([x for x in b["loss_by_position"] if x is not None], rel=rel)


def scalars(folder):
    events = EventAccumulator(str(folder / "tracking" / "tenfold"))
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def test_tensorboard_gets_every_steps_loss_lr_throughput_and_peak_memory(tracked_run):
    _, summary, run = tracked_run
    logged = scalars(run)
    assert list(logged["train/loss"]) == [1, 2, 3, 4]
    assert list(logged["train/loss"].values()) == pytest.approx(summary["losses"], rel=1e-6)
    assert list(logged["train/learning_rate"].values()) == pytest.approx(LEARNING_RATES, rel=1e-6)
    assert list(logged["train/tokens_per_s"]) == [1, 2, 3, 4] and min(logged["train/tokens_per_s"].values()) > 0
    peaks = list(logged["train/peak_memory_gb"].values())
    assert len(peaks) == 4 and 0 < peaks[0] <= peaks[-1] <= summary["peak_memory_gb"] + 1e-3


def test_held_out_loss_by_position_goes_to_the_tracker_the_summary_and_the_png(tracked_run):
    recipe, summary, run = tracked_run
    held_out = json.loads((run / "summary.json").read_text())["held_out"]
    assert held_out == summary["held_out"] and "in_progress" not in summary
    assert held_out["buckets"] == [f"{s}-{s + 63}" for s in range(0, 512, 64)]  # 8 buckets of data.max_length 512
    assert held_out["data"]["used"] == 6
    evaluations = held_out["evaluations"]
    assert [e["step"] for e in evaluations] == [0, 2, 4]  # step 0, every train.eval_every, the end
    assert evaluations[-1]["loss"] < evaluations[0]["loss"]  # training on the toy world helps its held-out records
    logged = scalars(run)
    assert logged["held_out/loss"] == pytest.approx({e["step"]: e["loss"] for e in evaluations}, rel=1e-6)
    for i, label in enumerate(held_out["buckets"]):
        by_step = {e["step"]: e["loss_by_position"][i] for e in evaluations if e["loss_by_position"][i] is not None}
        assert logged.get(f"held_out/loss_{label}", {}) == pytest.approx(by_step, rel=1e-6)
    assert sum(e["loss_by_position"][0] is not None for e in evaluations) == 3
    png = (run / "held_out_loss.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and int.from_bytes(png[16:20], "big") == 800  # 8 in at 100 dpi
    assert recipe.train.report_to == ["tensorboard"]


def reference_loss_by_position(recipe, files, width):
    """Plain transformers logits and cross-entropy, one record at a time, on a freshly loaded model: before a
    step, LoRA's B is zero, so this is the run's step-0 model."""
    model, _ = load_model_for_training(recipe, torch.device("cpu"))
    tokenizer = load_tokenizer(recipe.model.name)
    sums, weights = torch.zeros(8, dtype=torch.float64), torch.zeros(8, dtype=torch.float64)
    with torch.no_grad():
        for record in (r for f in files for r in read_jsonl(f)):
            encoded = encode_record(record, tokenizer, recipe.data.max_length)
            ids, w = torch.tensor([encoded.input_ids]), torch.tensor(encoded.weights[1:], dtype=torch.float64)
            logits = model(input_ids=ids).logits[0, :-1].float()
            ce = F.cross_entropy(logits, ids[0, 1:], reduction="none").double()
            bucket = torch.arange(1, ids.shape[1]) // width
            sums += torch.zeros(8, dtype=torch.float64).index_add_(0, bucket, ce * w)
            weights += torch.zeros(8, dtype=torch.float64).index_add_(0, bucket, w)
    return (sums.sum() / weights.sum()).item(), [(s / w).item() if w > 0 else None for s, w in zip(sums, weights)]


def test_the_held_out_loss_is_the_weighted_cross_entropy_of_each_position_bucket(tracked_run):
    recipe, summary, _ = tracked_run
    loss, by_position = reference_loss_by_position(recipe, recipe.data.eval_files, width=64)
    step_0 = summary["held_out"]["evaluations"][0]
    assert_same_evaluation(step_0, {"step": 0, "loss": loss, "loss_by_position": by_position}, rel=1e-5)


def test_held_out_passes_leave_the_training_unchanged(tracked_run, tiny_recipe, tmp_path):
    """With LoRA dropout, a held-out pass run in train mode would draw from the RNG, and a model left in eval
    mode would train without dropout: either changes the weights."""
    _, tracked, _ = tracked_run
    plain = loop.train(tiny_recipe(**{"lora.dropout": 0.1, "train.output_dir": str(tmp_path / "plain")}))
    assert plain["held_out"] is None
    assert (plain["losses"], plain["weights_sha256"]) == (tracked["losses"], tracked["weights_sha256"])


def test_a_killed_run_keeps_its_evaluations_and_the_resumed_run_adds_the_rest(tracked_run, tracked_recipe, tmp_path,
                                                                              monkeypatch):
    """Killed after the last step, with the adapter written but not the run's summary: summary.json holds every
    evaluation so far, and is no finished run's, so the same command resumes from the step-3 checkpoint."""
    _, whole, _ = tracked_run
    recipe = tracked_recipe(**{"train.output_dir": str(tmp_path / "killed"), "train.eval_every": 1,
                               "train.save_every": 3})
    real_save = loop.save_adapter

    def save_then_die(*args):
        real_save(*args)
        raise KeyboardInterrupt
    monkeypatch.setattr(loop, "save_adapter", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        loop.train(recipe)
    monkeypatch.setattr(loop, "save_adapter", real_save)
    kept = json.loads((tmp_path / "killed" / "summary.json").read_text())
    assert kept["in_progress"] and [e["step"] for e in kept["held_out"]["evaluations"]] == [0, 1, 2, 3, 4]
    assert (tmp_path / "killed" / "held_out_loss.png").is_file() and (tmp_path / "killed" / "adapter").is_dir()

    resumed = loop.train(recipe)
    assert resumed["resumed_from_step"] == 3 and "already_finished" not in resumed
    evaluations = {e["step"]: e for e in resumed["held_out"]["evaluations"]}
    assert list(evaluations) == [0, 1, 2, 3, 4]  # the checkpoint's 0-3, then step 4 again
    for e in whole["held_out"]["evaluations"]:  # the uninterrupted run's, every 2 steps
        assert_same_evaluation(evaluations[e["step"]], e, rel=1e-9)


def test_two_fsdp2_processes_share_the_held_out_batches_and_agree_with_one(tracked_run, tracked_recipe, tmp_path):
    """6 held-out records in micro-batches of 2 over 2 processes: the second process's second forward has no
    batch of its own (it repeats one, counted zero), so the sharded forwards stay in step."""
    _, one, _ = tracked_run
    path = tmp_path / "fsdp.yaml"
    loop.dump_recipe(tracked_recipe(**{"train.output_dir": str(tmp_path / "fsdp"), "train.report_to": "none"}), path)
    launch([WORKER, str(path), str(tmp_path / "summary-rank")], 2, tmp_path / "fsdp.log", config="fsdp2.yaml")
    summaries = [json.loads((tmp_path / f"summary-rank{r}").read_text()) for r in range(2)]
    assert [s["distributed"] for s in summaries] == ["FSDP"] * 2
    assert summaries[0]["held_out"] == summaries[1]["held_out"]
    steps = [e["step"] for e in summaries[0]["held_out"]["evaluations"]]
    assert steps == [0, 2, 4]
    # before any step the model is the same whatever the processes (later, their dropout draws differ)
    assert_same_evaluation(summaries[0]["held_out"]["evaluations"][0], one["held_out"]["evaluations"][0], rel=1e-5)


def test_a_tracker_that_is_not_installed_is_a_one_line_error_with_its_pip_line(tiny_recipe, tmp_path):
    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    with pytest.raises(UserError, match=r"^train.report_to: wandb is not installed; pip install wandb "):
        loop.train(tiny_recipe(**{"train.report_to": "tensorboard,wandb"}))
    assert not (tmp_path / "run").exists()  # refused before anything was loaded or written
