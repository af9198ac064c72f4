import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from processes import WORKER, launch
from tenfold.generation import load_backend
from tenfold.merge import MergeSettings, merge
from tenfold.models import load_run
from tenfold.recipe import load_recipe
from tenfold.rope import model_lengths, rotary_inv_freq
from tenfold.train import loop
from tenfold.train.loop import NonFiniteLossError, train
from tenfold.train.model import load_model_for_training


def base_inv_freq(theta, head_dim):
    return 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)


@pytest.fixture(scope="module")
def trained(tiny_model_dir, toy_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    recipe = load_recipe("recipes/tiny-cpu.yaml", {
        "model.name": str(tiny_model_dir), "data.train_files": [str(toy_data)], "data.max_length": 512,
        "train.output_dir": str(out / "run"), "train.batch_size": 4, "train.micro_batch_size": 2,
        "train.max_steps": 6, "train.save_every": 0, "train.learning_rate": 5e-3})
    summary = train(recipe)
    return recipe, summary, out


def test_tiny_training_loss_falls_and_writes_adapter_and_summary(trained):
    recipe, summary, out = trained
    run = out / "run"
    assert summary["steps"] == 6
    assert summary["final_loss"] < summary["first_loss"] - 0.05, summary["losses"]
    on_disk = json.loads((run / "summary.json").read_text())
    assert on_disk["rope"]["rope_theta"] == 200000.0
    assert on_disk["tokens_seen"] > 0 and on_disk["peak_memory_gb"] > 0
    assert {"records", "used", "truncated", "skipped"} <= set(on_disk["data"])
    adapter = load_file(run / "adapter" / "adapter_model.safetensors")
    assert any("lora_A" in k for k in adapter) and any("embed_tokens" in k for k in adapter)
    meta = json.loads((run / "adapter" / "tenfold.json").read_text())
    assert meta["rope_parameters"] == {"rope_type": "default", "rope_theta": 200000.0}
    assert not (run / "checkpoints").exists()


def test_rope_base_is_live_before_training(tiny_recipe):
    for overrides, expected_scale in [({}, 1.0), ({"rope.scaling": "linear", "rope.factor": 4.0}, 4.0),
                                      ({"rope.theta": None, "rope.theta_factor": 400.0}, 1.0)]:
        model, rope = load_model_for_training(tiny_recipe(**overrides), torch.device("cpu"))
        inv_freq = rotary_inv_freq(model)
        torch.testing.assert_close(inv_freq.double(), base_inv_freq(200000.0, 2 * inv_freq.numel()) / expected_scale)
        assert model.config.rope_parameters["rope_theta"] == 200000.0
        assert model.config.rope_theta == 200000.0


def test_merged_model_loads_with_plain_transformers_and_carries_the_rope(trained):
    _, _, out = trained
    merged_dir = merge(MergeSettings(out / "run", out / "merged"))
    config = json.loads((merged_dir / "config.json").read_text())
    assert config["rope_theta"] == 200000.0  # transformers 4 layout
    assert config["rope_parameters"]["rope_theta"] == 200000.0  # transformers 5 layout
    model = AutoModelForCausalLM.from_pretrained(merged_dir)
    inv_freq = rotary_inv_freq(model)
    torch.testing.assert_close(inv_freq.double(), base_inv_freq(200000.0, 2 * inv_freq.numel()))
    # the base's native length (256) survives the merge beside the run's training length (data.max_length)
    assert model_lengths(model.config) == {"native_length": 256, "training_length": 512}
    unmerged = load_backend(str(out / "run")).model  # the train output, as eval loads it
    assert model_lengths(unmerged.config) == {"native_length": 256, "training_length": 512}
    assert not any("lora" in name for name, _ in model.named_parameters())


def test_merge_equals_unmerged(trained, tiny_model_dir):
    _, _, out = trained
    merged_dir = out / "merged-2"
    merge(MergeSettings(out / "run", merged_dir))
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    unmerged, _, _ = load_run(out / "run")
    unmerged.eval()
    input_ids = torch.randint(0, merged.config.vocab_size, (2, 300), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids).logits, unmerged(input_ids).logits, rtol=1e-5, atol=1e-5)
    # the fully trained embeddings came through the merge, not the base's
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert not torch.equal(merged.get_input_embeddings().weight, base.get_input_embeddings().weight)


def test_resume_reaches_the_same_weights_as_an_uninterrupted_run(tiny_recipe, tmp_path, monkeypatch):
    whole = tiny_recipe(**{"train.output_dir": str(tmp_path / "whole"), "train.save_every": 2})
    train(whole)

    killed = tiny_recipe(**{"train.output_dir": str(tmp_path / "killed"), "train.save_every": 2})
    real_save = loop.save_checkpoint

    def save_then_die(out, step, *args):
        real_save(out, step, *args)
        raise KeyboardInterrupt  # the process dies right after its step-2 checkpoint
    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(killed)
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    assert (tmp_path / "killed" / "checkpoints" / "step-2").is_dir()
    summary = train(killed)
    assert summary["resumed_from_step"] == 2

    a = load_file(tmp_path / "whole" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "killed" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    whole_summary = json.loads((tmp_path / "whole" / "summary.json").read_text())
    assert summary["losses"] == whole_summary["losses"]


def test_resume_refuses_a_checkpoint_from_other_settings(tiny_recipe, tmp_path, monkeypatch):
    recipe = tiny_recipe(**{"train.save_every": 2})
    real_save = loop.save_checkpoint

    def save_then_die(*args):
        real_save(*args)
        raise KeyboardInterrupt
    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(recipe)
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    with pytest.raises(ValueError, match="train.learning_rate"):
        train(tiny_recipe(**{"train.save_every": 2, "train.learning_rate": 1e-4}))


def test_non_finite_loss_stops_with_step_and_record_ids(tiny_recipe, monkeypatch):
    calls = []

    def collate_poisoned_from_step_2(rows, pad_token_id):
        batch = real_collate(rows, pad_token_id)
        calls.append([r["id"] for r in rows])
        if len(calls) == 3:  # step 2's first micro-batch (2 micro-batches a step)
            batch["token_weights"][0, -1] = float("inf")
        return batch
    real_collate = loop.collate
    monkeypatch.setattr(loop, "collate", collate_poisoned_from_step_2)
    with pytest.raises(NonFiniteLossError, match=r"at step 2; records in this batch: \['toy-") as e:
        train(tiny_recipe())
    assert all(record_id in str(e.value) for record_id in calls[2] + calls[3])


def test_two_process_ddp_matches_one_process(tiny_recipe, tmp_path):
    train(tiny_recipe(**{"train.output_dir": str(tmp_path / "p1")}))
    path = tmp_path / "recipe2.yaml"
    loop.dump_recipe(tiny_recipe(**{"train.output_dir": str(tmp_path / "p2")}), path)
    launch([WORKER, str(path), str(tmp_path / "summary-rank")], 2, tmp_path / "torchrun.log")
    summaries = [json.loads((tmp_path / f"summary-rank{r}").read_text()) for r in range(2)]
    assert [(s["processes"], s["distributed"], s["sharded"]) for s in summaries] == [(2, "MULTI_CPU", False)] * 2
    assert len({s["weights_sha256"] for s in summaries}) == 1  # every replica ended with the same weights
    one, two = (load_file(tmp_path / p / "adapter" / "adapter_model.safetensors") for p in ("p1", "p2"))
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-5, atol=1e-6)
    assert json.loads((tmp_path / "p2" / "summary.json").read_text())["processes"] == 2


def test_offloaded_activations_train_to_the_same_weights(tiny_recipe, tmp_path):
    train(tiny_recipe(**{"train.output_dir": str(tmp_path / "plain"), "train.max_steps": 2}))
    train(tiny_recipe(**{"train.output_dir": str(tmp_path / "offload"), "train.max_steps": 2,
                         "model.offload_activations": True}))
    a = load_file(tmp_path / "plain" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "offload" / "adapter" / "adapter_model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_tied_embeddings_train_one_shared_matrix_through_save_merge_and_reload(toy_data, tmp_path):
    """A model whose head is its embedding matrix: the trained embedding is the head too, in training, in the
    saved adapter, in the unmerged backend and in the merged model (still tied, equal logits)."""
    from tenfold.models import load_run
    from tenfold.toy import write_tiny_llama

    base = write_tiny_llama(tmp_path / "tied", hidden_size=32, num_attention_heads=2, num_key_value_heads=1,
                            tie_word_embeddings=True)
    recipe = load_recipe("recipes/tiny-cpu.yaml", {
        "model.name": str(base), "data.train_files": [str(toy_data)], "data.max_length": 256,
        "train.output_dir": str(tmp_path / "run"), "train.batch_size": 2, "train.micro_batch_size": 2,
        "train.max_steps": 2, "train.save_every": 0, "train.learning_rate": 5e-3})
    train(recipe)
    merged_dir = merge(MergeSettings(tmp_path / "run", tmp_path / "merged"))
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    assert merged.config.tie_word_embeddings and merged.lm_head.weight is merged.model.embed_tokens.weight
    original = AutoModelForCausalLM.from_pretrained(base)
    assert not torch.equal(merged.lm_head.weight, original.lm_head.weight)  # the head followed the training
    unmerged, _, _ = load_run(tmp_path / "run")
    ids = torch.randint(0, merged.config.vocab_size, (1, 100), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, unmerged.eval()(ids).logits, rtol=1e-5, atol=1e-5)
