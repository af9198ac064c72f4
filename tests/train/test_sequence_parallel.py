"""Ulysses sequence parallelism on 2 CPU processes (gloo's all_to_all_single) with the 4-bit base."""

import json

import pytest
import torch
from safetensors.torch import load_file

from processes import WORKER as TRAIN_WORKER
from processes import launch
from tenfold.toy import build_model
from tenfold.train import loop

SP_WORKER = "benchmarks/sequence_parallel_step.py"  # what the benchmark of the same name runs


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory):
    """Wide and long enough that the step's activations, not fixed costs, set its memory; 1 key/value head,
    fewer than the processes (the head groups are repeated before the all-to-all)."""
    path = tmp_path_factory.mktemp("sp-model")
    build_model(vocab_size=512, hidden_size=256, intermediate_size=896, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=1, rope_theta=10000.0, max_position_embeddings=8192).save_pretrained(path)
    return path


def test_two_processes_split_one_sequence_to_the_same_loss_and_gradients_at_most_0_6x_memory(wide_model, tmp_path):
    out = str(tmp_path / "sp")
    # An odd length: the last slice is padded. glibc's dynamic mmap threshold keeps freed tensors in the heap,
    # which hides a step's growth; a fixed one makes the resident peak track the live tensors (tests/test_plan.py).
    launch([SP_WORKER, str(wide_model), out, "6143"], 2, tmp_path / "sp.log", env={"MALLOC_MMAP_THRESHOLD_": "65536"})
    seen = torch.load(out + ".pt")
    (loss, grads), (whole_loss, whole_grads) = seen["sp"], seen["whole"]
    assert whole_loss > 0 and sorted(grads) == sorted(whole_grads)
    assert any("lora_A" in name for name in grads) and any("embed_tokens" in name for name in grads)
    torch.testing.assert_close(loss, whole_loss, rtol=1e-5, atol=1e-5)
    for name, grad in whole_grads.items():
        assert grad.abs().max() > 0, name
        torch.testing.assert_close(grads[name], grad, rtol=1e-5, atol=1e-5, msg=name)
    memory = json.loads(open(out + ".json").read())
    assert memory["sp_growth"] <= 0.6 * memory["whole_growth"], memory


def test_tenfold_train_with_sequence_parallel_2_reaches_the_one_process_adapter(tiny_recipe, toy_data, tmp_path):
    """`train.sequence_parallel: 2` on 2 processes: both hold slices of every sequence; same adapter as 1, and
    the same held-out loss by position (each slice's positions in their own buckets)."""
    held_out = {"data.eval_files": [str(toy_data)], "train.max_steps": 2}  # any records do
    loop.train(tiny_recipe(**{"train.output_dir": str(tmp_path / "one"), **held_out}))
    path = tmp_path / "sp.yaml"
    loop.dump_recipe(tiny_recipe(**{"train.output_dir": str(tmp_path / "sp"), **held_out,
                                    "train.sequence_parallel": 2}), path)
    launch([TRAIN_WORKER, str(path), str(tmp_path / "summary-rank")], 2, tmp_path / "train.log")
    summaries = [json.loads((tmp_path / f"summary-rank{r}").read_text()) for r in range(2)]
    one_summary = json.loads((tmp_path / "one" / "summary.json").read_text())
    assert [(s["processes"], s["steps"], s["tokens_seen"]) for s in summaries] == \
        [(2, 2, one_summary["tokens_seen"])] * 2
    torch.testing.assert_close(summaries[0]["losses"], one_summary["losses"], rtol=1e-5, atol=0)
    one, sp = (load_file(tmp_path / d / "adapter" / "adapter_model.safetensors") for d in ("one", "sp"))
    for name in one:
        torch.testing.assert_close(sp[name], one[name], rtol=1e-5, atol=1e-6)
    (sp_loss,), (one_loss,) = (s["held_out"]["evaluations"] for s in (summaries[0], one_summary))
    assert sp_loss["step"] == one_loss["step"] == 2 and None not in one_loss["loss_by_position"][:4]
    torch.testing.assert_close([sp_loss["loss"], *sp_loss["loss_by_position"]],
                               [one_loss["loss"], *one_loss["loss_by_position"]], rtol=1e-5, atol=0)
