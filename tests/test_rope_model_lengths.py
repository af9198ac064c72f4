"""Per-model truths in reports: the native length of the model at hand and the length tenfold trained it
at, read from the model (never a constant), drawn on the heatmaps and written in every summary."""

import pytest
from transformers import LlamaConfig

from tenfold.eval.plots import length_marks
from tenfold.generation import load_backend
from tenfold.recipe import RopeSettings
from tenfold.rope import apply_rope, model_lengths
from tenfold.toy import llama_config


def test_each_known_length_is_marked_after_the_last_column_within_it_and_labelled():
    xs = [2048, 4096, 8192, 16384, 81920, 131072]
    marks = length_marks(xs, {"native_length": 8192, "training_length": 81920})
    assert [(position, label) for position, label, *_ in marks] == [
        (3, "native length 8,192"), (5, "training length 81,920")]
    assert marks[0][2:] != marks[1][2:]  # told apart on the plot, not only in the legend
    assert [label for _, label, *_ in length_marks(xs, {"native_length": 8192, "training_length": None})] == \
        ["native length 8,192"]
    assert length_marks(xs, {"native_length": 1024}) == []  # shorter than every column: no line


def test_a_config_knows_its_native_length_and_keeps_it_through_training_and_save(tmp_path):
    config = llama_config(vocab_size=16, hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=1,
                          num_key_value_heads=1, rope_theta=10000.0, max_position_embeddings=8192)
    assert model_lengths(config) == {"native_length": 8192, "training_length": None}
    apply_rope(config, RopeSettings(theta=400000.0))  # a training-free override: nothing was trained
    assert model_lengths(config) == {"native_length": 8192, "training_length": None}
    apply_rope(config, RopeSettings(theta=2e8), max_length=81920)  # what train and merge load
    assert config.max_position_embeddings == 81920
    assert model_lengths(config) == {"native_length": 8192, "training_length": 81920}
    config.save_pretrained(tmp_path)
    reloaded = LlamaConfig.from_pretrained(tmp_path)
    assert model_lengths(reloaded) == {"native_length": 8192, "training_length": 81920}


@pytest.mark.parametrize("rope_theta", [None, 200000.0])
def test_an_untrained_model_reports_its_native_length_and_no_training_length(tiny_model_dir, rope_theta, tmp_path):
    from tenfold.eval.passkey import run_passkey

    backend = load_backend(str(tiny_model_dir), rope_theta=rope_theta, max_length=1024, batch_size=4)
    summary = run_passkey(backend, tmp_path, lengths=[200, 300], depths=[50])
    assert summary["model"]["native_length"] == 256  # the tiny model's max_position_embeddings
    assert summary["model"]["training_length"] is None
