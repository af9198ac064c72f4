"""Issue 14 for train and merge: merge's output folder, a finished run started again, Ctrl-C during training."""

import json
import signal
import sys

import pytest
import torch
from safetensors.torch import load_file

from tenfold import cli
from tenfold.merge import MergeSettings, merge
from tenfold.recipe import dump_recipe, load_recipe
from tenfold.train import loop
from tenfold.train.loop import deferred_interrupt, train


@pytest.fixture(scope="module")
def one_step_run(tiny_model_dir, toy_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("one-step") / "run"
    train(load_recipe("recipes/tiny-cpu.yaml", {
        "model.name": str(tiny_model_dir), "data.train_files": [str(toy_data)], "data.max_length": 512,
        "train.output_dir": str(run), "train.batch_size": 2, "train.max_steps": 1, "train.save_every": 0}))
    return run


def files_and_times(folder):
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*")}


def one_line_error(capsys, *parts):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for part in parts:
        assert part in err, err


def test_merge_refuses_a_non_empty_folder_unless_overwrite(one_step_run, tmp_path, capsys):
    out = tmp_path / "merged"
    out.mkdir()
    (out / "stale.txt").write_text("from another model")
    with pytest.raises(ValueError, match="not empty"):
        merge(MergeSettings(one_step_run, out))
    with pytest.raises(SystemExit) as e:
        cli.main(["merge", str(one_step_run), "--output-dir", str(out)])
    assert e.value.code == 2
    one_line_error(capsys, f"tenfold merge: error: --output-dir {out} is not empty", "--overwrite")
    assert (out / "stale.txt").read_text() == "from another model"

    cli.main(["merge", str(one_step_run), "--output-dir", str(out), "--overwrite"])
    assert not (out / "stale.txt").exists()
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()


@pytest.mark.parametrize("target", ["adapter", "merged", ".", ".."])
def test_merge_refuses_a_folder_inside_the_run_or_holding_it_even_with_overwrite(one_step_run, target, capsys):
    before = files_and_times(one_step_run)
    out = one_step_run / target
    with pytest.raises(SystemExit) as e:
        cli.main(["merge", str(one_step_run), "--output-dir", str(out), "--overwrite"])
    assert e.value.code == 2
    one_line_error(capsys, f"--output-dir {out} is inside the run", "choose a folder outside it")
    assert files_and_times(one_step_run) == before


def test_a_finished_run_started_again_is_not_trained_again(tiny_recipe, tmp_path, monkeypatch, capsys):
    recipe = tiny_recipe(**{"train.max_steps": 1})
    first = train(recipe)
    run = tmp_path / "run"
    written = files_and_times(run)
    path = tmp_path / "recipe.yaml"
    dump_recipe(recipe, path)
    real_load = loop.load_model_for_training
    monkeypatch.setattr(loop, "load_model_for_training", lambda *a: pytest.fail("trained a finished run again"))
    capsys.readouterr()

    cli.main(["train", "--recipe", str(path)])  # returns: exit code 0
    said = capsys.readouterr().out.strip()
    assert said == (f"{run} is already trained with this recipe: adapter in {run / 'adapter'}, summary in "
                    f"{run / 'summary.json'}; nothing to do (--overwrite trains it again)")
    again = train(recipe)
    assert again.pop("already_finished") and again == json.loads((run / "summary.json").read_text())
    assert again["weights_sha256"] == first["weights_sha256"]
    assert files_and_times(run) == written

    with pytest.raises(SystemExit) as e:  # other settings are refused, naming the keys that changed
        cli.main(["train", "--recipe", str(path), "--train.learning_rate", "1e-4", "--train.save_every", "3"])
    assert e.value.code == 2
    one_line_error(capsys, f"{run} holds a finished run with other settings (train.learning_rate)", "--overwrite")

    monkeypatch.setattr(loop, "load_model_for_training", real_load)
    cli.main(["train", "--recipe", str(path), "--train.learning_rate", "1e-4", "--overwrite"])
    assert json.loads((run / "adapter" / "tenfold.json").read_text())["recipe"]["train"]["learning_rate"] == 1e-4
    assert json.loads((run / "summary.json").read_text())["weights_sha256"] != first["weights_sha256"]


def test_ctrl_c_mid_step_keeps_the_last_finished_step_and_the_command_resumes(tiny_recipe, tmp_path, monkeypatch,
                                                                              capsys):
    settings = {"lora.dropout": 0.1, "train.save_every": 0}  # dropout: the interrupted step used the RNG
    whole = train(tiny_recipe(**settings, **{"train.output_dir": str(tmp_path / "whole")}))
    path = tmp_path / "recipe.yaml"
    dump_recipe(tiny_recipe(**settings), path)
    argv = ["train", "--recipe", str(path)]
    monkeypatch.setattr(sys, "argv", ["/venv/bin/tenfold", *argv])
    calls, real_collate = [], loop.collate

    def ctrl_c_in_step_3(rows, pad_token_id):
        calls.append(rows)
        if len(calls) == 6:  # step 3's second micro-batch: its first one has already run backward
            raise KeyboardInterrupt
        return real_collate(rows, pad_token_id)
    monkeypatch.setattr(loop, "collate", ctrl_c_in_step_3)
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 130
    checkpoints = tmp_path / "run" / "checkpoints"
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (f"tenfold train: interrupted; checkpoint {checkpoints / 'step-2'} kept "
                                            f"(step 2); to resume, run: tenfold train --recipe {path}")
    assert [p.name for p in checkpoints.iterdir()] == ["step-2"]

    monkeypatch.setattr(loop, "collate", real_collate)
    cli.main(argv)
    resumed = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert resumed["resumed_from_step"] == 2 and resumed["losses"] == whole["losses"]
    a = load_file(tmp_path / "whole" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "run" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_ctrl_c_while_the_optimizer_steps_waits_for_the_step_to_finish():
    finished = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_interrupt():
            signal.raise_signal(signal.SIGINT)
            finished.append("the rest of the step")
    assert finished == ["the rest of the step"]
