"""eval resumes only predictions made the same way: model, adapter, RoPE, preset, generation settings."""

import json
import shutil

import pytest

from tenfold.cli import main
from tenfold.eval.needle import run_needle
from tenfold.eval.runner import transformers4_clean_up, transformers4_decode
from tenfold.generation import TransformersBackend, load_backend

GRID = ["--lengths", "300", "--depths", "0,50,100", "--max-length", "1024"]


@pytest.fixture
def generated(monkeypatch):
    """The prompts every transformers backend generates for, in this test."""
    prompts = []
    real = TransformersBackend.generate

    def counting(self, batch, *args, **kwargs):
        prompts.extend(batch)
        return real(self, batch, *args, **kwargs)

    monkeypatch.setattr(TransformersBackend, "generate", counting)
    return prompts


def needle(model, out, *extra):
    main(["eval", "needle", "--model", str(model), "--output-dir", str(out), *GRID, *extra])


def error_line(capsys) -> str:
    """The one error line (stderr also holds transformers' weight-loading bar)."""
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line]
    assert "Traceback" not in err and len(errors) == 1 and errors[0].startswith("tenfold eval: error: ")
    return errors[0]


def test_same_settings_resume_and_redo_nothing(tiny_model_dir, tmp_path, generated):
    needle(tiny_model_dir, tmp_path)
    assert len(generated) == 3
    key = json.loads((tmp_path / "needle.key.json").read_text())
    assert key["benchmark"] == "needle" and key["settings"]["preset"] == "paper"
    assert key["backend"]["kind"] == "transformers" and key["backend"]["rope"]["rope_theta"] == 500.0
    first = (tmp_path / "needle.json").read_text()
    needle(tiny_model_dir, tmp_path, "--batch-size", "2")  # batch size is no part of the key
    assert len(generated) == 3 and (tmp_path / "needle.json").read_text() == first


def test_other_rope_theta_into_the_same_folder_is_refused_in_one_line(tiny_model_dir, tmp_path, generated,
                                                                      capsys):
    needle(tiny_model_dir, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        needle(tiny_model_dir, tmp_path, "--rope-theta", "400000")
    assert exit_info.value.code == 2
    err = error_line(capsys)
    assert str(tmp_path) in err and "backend.rope.rope_theta 500.0 -> 400000.0" in err
    assert "--overwrite" in err and "--output-dir" in err
    assert len(generated) == 3  # nothing generated, nothing rewritten: the old cells are not the new score
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_predictions_without_a_key_are_refused_too(tiny_model_dir, tmp_path, generated, capsys):
    needle(tiny_model_dir, tmp_path)
    (tmp_path / "needle.key.json").unlink()  # as a folder written before keys were stored
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        needle(tiny_model_dir, tmp_path)
    assert exit_info.value.code == 2
    err = error_line(capsys)
    assert "before" in err and "needle.key.json" in err and "--overwrite" in err
    assert len(generated) == 3


def test_overwrite_discards_and_recomputes(tiny_model_dir, tmp_path, generated):
    needle(tiny_model_dir, tmp_path)
    needle(tiny_model_dir, tmp_path, "--rope-theta", "400000", "--overwrite")
    assert len(generated) == 6  # every cell again
    log = (tmp_path / "needle.predictions.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["id"] for line in log) == ["L300-D0", "L300-D100", "L300-D50"]
    key = json.loads((tmp_path / "needle.key.json").read_text())
    assert key["backend"]["rope"]["rope_theta"] == 400000.0
    summary = json.loads((tmp_path / "needle.summary.json").read_text())
    assert summary["model"]["rope"]["rope_theta"] == 400000.0
    needle(tiny_model_dir, tmp_path, "--rope-theta", "400000")  # and then resumes under the new key
    assert len(generated) == 6

    backend = load_backend(str(tiny_model_dir), max_length=1024)  # the keyword, from Python
    with pytest.raises(ValueError, match="--overwrite"):
        run_needle(backend, tmp_path, lengths=[300], depths=[0, 50, 100])
    run_needle(backend, tmp_path, lengths=[300], depths=[0, 50, 100], overwrite=True)
    assert len(generated) == 9


def test_a_train_output_is_identified_by_its_adapter_weights(tmp_path):
    from tenfold.generation import model_identity

    adapter = tmp_path / "run" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "tenfold.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"first")
    first = model_identity(str(tmp_path / "run"))
    (adapter / "adapter_model.safetensors").write_bytes(b"again")  # trained again into the same folder
    second = model_identity(str(tmp_path / "run"))
    assert first["adapter_sha256"] != second["adapter_sha256"]
    shutil.copytree(tmp_path / "run", tmp_path / "moved")  # the same weights elsewhere: the same predictions
    assert model_identity(str(tmp_path / "moved")) == second


def test_cases_are_batched_by_their_length_in_tokens_not_in_characters(tiny_backend, tmp_path):
    from fakes import FakeBackend
    from tenfold.eval.runner import prompt_tokens, run_cases

    # toy-world words are few tokens for their characters, letter salad many: the two orders disagree
    cases = [{"id": f"c{i}", "prompt": text * n} for i, (text, n) in enumerate(
        [("the red fox paints two blue doors . ", 6), ("qz xv kj wp ", 6), ("the red fox paints two blue doors . ", 2),
         ("qz xv kj wp ", 2)])]
    tokens = {case["id"]: prompt_tokens(tiny_backend, case) for case in cases}
    chars = {case["id"]: len(case["prompt"]) for case in cases}
    assert sorted(tokens, key=tokens.get) != sorted(chars, key=chars.get)  # the case
    fake = FakeBackend(lambda _: "", inner=tiny_backend, batch_size=2)
    run_cases(fake, cases, tmp_path / "x.predictions.jsonl", 2, lambda *_: {})
    by_prompt = {case["prompt"]: case["id"] for case in cases}
    batches = [[by_prompt[p] for p in call["prompts"]] for call in fake.calls]
    assert batches == [sorted(tokens, key=tokens.get)[:2], sorted(tokens, key=tokens.get)[2:]]
    assert prompt_tokens(FakeBackend(lambda _: ""), cases[0]) == chars["c0"]  # no tokenizer: characters


def test_transformers4_decode_cleans_up_spaces_as_transformers_4_did(tiny_backend, monkeypatch):
    tok = tiny_backend.tokenizer
    ids = tok.encode("It 's a test . Is it ? Yes , it is n't .", add_special_tokens=False)
    raw = tok.decode(ids, clean_up_tokenization_spaces=False)
    assert raw == "It 's a test . Is it ? Yes , it is n't ."
    assert "clean_up_tokenization_spaces" not in tok.init_kwargs  # unsaid: transformers 4's default, True
    cleaned = "It's a test. Is it? Yes, it isn't."
    assert transformers4_decode(tok, ids) == transformers4_decode(tok, ids, "yes") == cleaned
    assert transformers4_clean_up(tok, raw) == cleaned and transformers4_decode(tok, ids, "no") == raw
    with_eos = ids + [tok.eos_token_id]
    assert transformers4_decode(tok, with_eos, skip_special_tokens=True) == cleaned
    assert transformers4_decode(tok, with_eos) == cleaned + tok.eos_token
    monkeypatch.setitem(tok.init_kwargs, "clean_up_tokenization_spaces", False)  # the config says no
    assert transformers4_decode(tok, ids) == raw
    with pytest.raises(ValueError, match="tokenizer, yes or no"):
        transformers4_decode(tok, ids, "maybe")
