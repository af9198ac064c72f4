"""DeepSpeed ZeRO-2 through accelerate's config (recipes/accelerate/deepspeed-zero2.yaml) on 2 CPU processes:
DeepSpeed's own CPU accelerator over gloo, with the 4-bit base."""

import json

import pytest
import torch
from safetensors.torch import load_file

from processes import WORKER, launch
from tenfold.train import loop

pytest.importorskip("deepspeed", reason="DeepSpeed is optional: pip install tenfold[deepspeed]")


def run_against_one_process(tiny_recipe, tmp_path, config: str, *flags: str) -> str:
    """Each process runs 2 micro-batches of 2 per step (accumulation 2, the engine's boundary); 1 process runs
    each step's 8 sequences as one micro-batch. Same records per step (no length grouping), same weights."""
    same = {"train.batch_size": 8, "train.max_steps": 2, "train.group_by_length": False, "train.save_every": 0}
    loop.train(tiny_recipe(**same, **{"train.output_dir": str(tmp_path / "one"), "train.micro_batch_size": 8}))
    path = tmp_path / "many.yaml"
    loop.dump_recipe(tiny_recipe(**same, **{"train.output_dir": str(tmp_path / "many"),
                                            "train.micro_batch_size": 2}), path)
    log = launch([WORKER, str(path), str(tmp_path / "summary-rank"), *flags], 2, tmp_path / "many.log", config=config)
    summaries = [json.loads((tmp_path / f"summary-rank{r}").read_text()) for r in range(2)]
    assert [(s["processes"], s["distributed"], s["steps"]) for s in summaries] == [(2, "DEEPSPEED", 2)] * 2
    one, many = (load_file(tmp_path / d / "adapter" / "adapter_model.safetensors") for d in ("one", "many"))
    assert sorted(one) == sorted(many)
    for name in one:
        torch.testing.assert_close(many[name], one[name], rtol=1e-5, atol=1e-6)
    return log


def test_zero2_accumulating_two_micro_batches_equals_one_step_on_their_concatenation(tiny_recipe, tmp_path):
    run_against_one_process(tiny_recipe, tmp_path, "deepspeed-zero2.yaml")


def test_zero3_partitions_the_4bit_base_and_the_adapter_and_equals_one_step_on_the_concatenation(tiny_recipe,
                                                                                                    tmp_path):
    """ZeRO-3 loads the 4-bit base without a device_map and partitions it and the adapter over the processes
    (every parameter: --partition-all); the adapter is gathered whole for saving."""
    log = run_against_one_process(tiny_recipe, tmp_path, "deepspeed-zero3.yaml", "--partition-all")
    assert "DEEPSPEED over 2 processes: sharded 4-bit weights: 14 of 14, trainable tensors: 17 of 17" in log
