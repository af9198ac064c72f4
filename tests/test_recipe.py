from pathlib import Path

import pytest

from tenfold.cli import build_parser, recipe_from_args
from tenfold.recipe import RecipeError, load_recipe


def test_paper_recipe_is_the_papers_run():
    r = load_recipe("recipes/llama3-8b-instruct-80k.yaml")
    assert r.model.name == "meta-llama/Meta-Llama-3-8B-Instruct"
    assert r.model.quantization == "nf4" and r.model.gradient_checkpointing
    assert (r.lora.rank, r.lora.alpha) == (32, 16.0)
    assert r.lora.targets == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert r.lora.extra_trainable == ["embed_tokens"]
    assert r.rope.theta == 200_000_000.0 and r.rope.scaling == "none"
    assert r.data.max_length == 81920 and r.data.context_weight == 0.0
    assert (r.train.learning_rate, r.train.lr_schedule, r.train.warmup_steps) == (5e-5, "linear", 0)
    assert (r.train.batch_size, r.train.epochs) == (8, 1)


def test_unknown_key_names_the_key_and_the_allowed_ones(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("lora:\n  rnk: 16\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    assert "lora.rnk" in str(e.value) and "rank" in str(e.value) and str(path) in str(e.value)


def test_bad_choice_lists_allowed_values():
    with pytest.raises(RecipeError, match="model.quantization.*'nf4', 'int8', 'none'"):
        load_recipe(None, {"model.quantization": "nf5"})


def test_bad_type_names_key():
    with pytest.raises(RecipeError, match="lora.rank: expected int"):
        load_recipe(None, {"lora.rank": "many"})


def test_cli_flags_override_one_key_each():
    args = build_parser().parse_args([
        "train", "--recipe", "recipes/llama3-8b-instruct-80k.yaml", "--lora.rank", "16", "--rope-theta", "1e6",
        "--max-steps", "3", "--output-dir", "x", "--data", "a.jsonl", "b.jsonl", "--lora.targets", "q_proj,v_proj",
        "--model.gradient_checkpointing", "false",
    ])
    r = recipe_from_args(args)
    assert r.lora.rank == 16 and r.lora.alpha == 16.0
    assert r.rope.theta == 1e6 and r.train.max_steps == 3 and r.train.output_dir == "x"
    assert r.data.train_files == ["a.jsonl", "b.jsonl"]
    assert r.lora.targets == ["q_proj", "v_proj"]
    assert r.model.gradient_checkpointing is False
    assert r.data.max_length == 81920  # untouched keys keep the file's value


def test_batch_size_must_divide():
    with pytest.raises(RecipeError, match="multiple of train.micro_batch_size"):
        load_recipe(None, {"train.batch_size": 6, "train.micro_batch_size": 4})


def test_cli_unknown_recipe_flag_lists_allowed_keys(capsys):
    from tenfold.cli import main
    with pytest.raises(SystemExit) as e:
        main(["train", "--recipe", "recipes/tiny-cpu.yaml", "--lora.rnk", "3"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "lora.rnk" in err and "lora.rank" in err


def test_a_recipe_may_carry_other_verbs_sections(tmp_path):
    path = tmp_path / "all.yaml"
    path.write_text("lora:\n  rank: 8\nsynth:\n  tasks: [single_detail]\neval:\n  models: [x]\n")
    assert load_recipe(path).lora.rank == 8
    path.write_text("lora:\n  rank: 8\nsynthh:\n  tasks: [single_detail]\n")
    with pytest.raises(RecipeError, match="synthh"):
        load_recipe(path)


def test_report_to_takes_accelerates_tracker_names_from_yaml_or_the_command_line(tmp_path):
    from accelerate.utils import LoggerType

    from tenfold.recipe import TRACKERS

    assert set(TRACKERS) == {t.value for t in LoggerType}
    path = tmp_path / "tracked.yaml"
    path.write_text("train:\n  report_to: [tensorboard, wandb]\n")
    assert load_recipe(path).train.report_to == ["tensorboard", "wandb"]
    args = build_parser().parse_args(["train", "--recipe", str(path), "--train.report_to", "TensorBoard, all"])
    assert recipe_from_args(args).train.report_to == ["tensorboard", "all"]
    assert load_recipe(None).train.report_to == [] == load_recipe(None, {"train.report_to": "none"}).train.report_to
    with pytest.raises(RecipeError, match="'tensorbord' is not a tracker; use none or all, tensorboard, wandb"):
        load_recipe(None, {"train.report_to": "tensorbord"})


def test_eval_every_needs_held_out_files():
    with pytest.raises(RecipeError, match="train.eval_every needs held-out data: set data.eval_files"):
        load_recipe(None, {"train.eval_every": 10})
    recipe = load_recipe(None, {"train.eval_every": 10, "data.eval_files": "a.jsonl,b.jsonl"})
    assert recipe.data.eval_files == ["a.jsonl", "b.jsonl"]


@pytest.mark.parametrize("path", sorted(Path("recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_loads(path):
    assert load_recipe(path).lora.rank > 0


def test_smollm2_cpu_recipe_is_the_papers_method_at_twice_native_length():
    r = load_recipe("recipes/smollm2-cpu.yaml")
    assert r.model.name == "tenfold/smollm2-135m-instruct" and r.model.gradient_checkpointing
    assert (r.lora.rank, r.lora.alpha, r.lora.extra_trainable) == (32, 16.0, ["embed_tokens"])
    assert r.data.max_length == 2 * 8192 and r.rope.theta_factor == 4.0
    assert (r.train.lr_schedule, r.train.batch_size, r.train.mixed_precision) == ("linear", 1, "bf16")
