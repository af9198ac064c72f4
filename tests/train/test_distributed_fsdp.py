"""FSDP2 through accelerate's config (recipes/accelerate/fsdp2.yaml) on 2 CPU processes with the 4-bit base."""

import json

import torch
from safetensors.torch import load_file

from processes import WORKER, launch
from tenfold.train import loop


def test_two_process_fsdp2_with_a_resume_matches_one_process(tiny_recipe, tmp_path):
    """2 processes under FSDP2, killed after step 2's checkpoint and resumed, reach the adapter of 1 process."""
    one = tiny_recipe(**{"train.output_dir": str(tmp_path / "one"), "train.save_every": 2})
    loop.train(one)
    reference = load_file(tmp_path / "one" / "adapter" / "adapter_model.safetensors")

    path = tmp_path / "fsdp.yaml"
    loop.dump_recipe(tiny_recipe(**{"train.output_dir": str(tmp_path / "fsdp"), "train.save_every": 2}), path)
    prefix = str(tmp_path / "summary-rank")
    launch([WORKER, str(path), prefix, "--die-after-checkpoint"], 2, tmp_path / "killed.log", config="fsdp2.yaml")
    assert "interrupted" in json.loads((tmp_path / "summary-rank0").read_text())
    assert (tmp_path / "fsdp" / "checkpoints" / "step-2").is_dir()
    launch([WORKER, str(path), prefix], 2, tmp_path / "resumed.log", config="fsdp2.yaml")
    summaries = [json.loads((tmp_path / f"summary-rank{r}").read_text()) for r in range(2)]

    assert [(s["processes"], s["distributed"], s["sharded"], s["resumed_from_step"]) for s in summaries] == \
        [(2, "FSDP", True, 2)] * 2
    # The 4-bit base is sharded too: it was stored in a dtype FSDP shards (bnb_4bit_quant_storage).
    assert "sharded 4-bit weights: 14 of 14, trainable tensors: 17 of 17" in (tmp_path / "resumed.log").read_text()
    adapter = load_file(tmp_path / "fsdp" / "adapter" / "adapter_model.safetensors")
    assert sorted(adapter) == sorted(reference)  # saved whole from rank 0, with the trained embedding
    for name in reference:
        torch.testing.assert_close(adapter[name], reference[name], rtol=0, atol=1e-6)
