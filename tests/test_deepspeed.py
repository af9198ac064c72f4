"""DeepSpeed ZeRO-2 through accelerate's config (recipes/accelerate/deepspeed-zero2.yaml) on 2 CPU processes:
DeepSpeed's own CPU accelerator over gloo, with the 4-bit base."""

import json

import pytest
import torch
from safetensors.torch import load_file

from processes import WORKER, launch
from tenfold.train import loop

pytest.importorskip("deepspeed", reason="DeepSpeed is optional: pip install tenfold[deepspeed]")


def test_zero2_accumulating_two_micro_batches_equals_one_step_on_their_concatenation(tiny_recipe, tmp_path):
    """Each process runs 2 micro-batches of 2 per step (accumulation 2, the engine's boundary); 1 process runs
    each step's 8 sequences as one micro-batch. Same records per step (no length grouping), same weights."""
    same = {"train.batch_size": 8, "train.max_steps": 2, "train.group_by_length": False, "train.save_every": 0}
    loop.train(tiny_recipe(**same, **{"train.output_dir": str(tmp_path / "one"), "train.micro_batch_size": 8}))
    path = tmp_path / "zero2.yaml"
    loop.dump_recipe(tiny_recipe(**same, **{"train.output_dir": str(tmp_path / "zero2"),
                                            "train.micro_batch_size": 2}), path)
    launch([WORKER, str(path), str(tmp_path / "summary-rank")], 2, tmp_path / "zero2.log",
           config="deepspeed-zero2.yaml")
    summaries = [json.loads((tmp_path / f"summary-rank{r}").read_text()) for r in range(2)]
    assert [(s["processes"], s["distributed"], s["steps"]) for s in summaries] == [(2, "DEEPSPEED", 2)] * 2
    one, zero2 = (load_file(tmp_path / d / "adapter" / "adapter_model.safetensors") for d in ("one", "zero2"))
    assert sorted(one) == sorted(zero2)
    for name in one:
        torch.testing.assert_close(zero2[name], one[name], rtol=1e-5, atol=1e-6)
