"""The settings engine (tenfold.config), the command line made from it, and the benchmark registry: every verb's
settings field is a flag, every registered benchmark option reaches its function, one verb's parser imports no
other verb's modules."""

import argparse
import dataclasses
import inspect
import json
import subprocess
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from tenfold import cli
from tenfold.config import add_flags, field_types, load_settings, setting
from tenfold.errors import RecipeError
from tenfold.eval import BENCHMARKS, EvalSettings, benchmark, benchmark_options


@dataclass
class Example:
    name: str = setting(help="required")
    count: int = setting(3, "a number")
    mode: Literal["a", "b"] = setting("a", "a choice")
    words: list[str] = setting(["x"], "a list")
    recipe: str | None = setting(None, "the file")

    def __post_init__(self):
        if self.count < 0:
            raise RecipeError(f"example.count is {self.count}; give 0 or more")


def test_settings_come_from_defaults_then_the_files_section_then_the_overrides(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("example:\n  count: 5\n  mode: b\n  words: [p, q]\nother:\n  anything: 1\n")
    s = load_settings(Example, "example", path, {"name": "n", "count": "7", "mode": None})
    assert (s.name, s.count, s.mode, s.words) == ("n", 7, "b", ["p", "q"])  # None: not given
    assert s.recipe == str(path)  # a `recipe` field gets the file it was read from
    assert load_settings(Example, "example", None, {"name": "n", "words": "a, b"}).words == ["a", "b"]
    assert load_settings(Example, "example", None, {"name": Path("/p")}).name == "/p"


def test_settings_errors_name_the_key_where_it_was_set_and_what_is_allowed(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("example:\n  cont: 5\n")
    with pytest.raises(RecipeError, match=f"^{path}: unknown example key 'cont'; allowed: name, count, mode, words"):
        load_settings(Example, "example", path, {"name": "n"})
    with pytest.raises(RecipeError, match="^command line: example.count: expected int, got 'many'$"):
        load_settings(Example, "example", None, {"name": "n", "count": "many"})
    with pytest.raises(RecipeError, match="example.mode: 'c' is not allowed; use one of 'a', 'b'"):
        load_settings(Example, "example", None, {"name": "n", "mode": "c"})
    with pytest.raises(RecipeError, match="^example needs name; give --name$"):
        load_settings(Example, "example", None, {})
    with pytest.raises(RecipeError, match="example.count is -1; give 0 or more"):  # the class's own check
        load_settings(Example, "example", None, {"name": "n", "count": -1})
    path.write_text("example: [1, 2]\n")
    with pytest.raises(RecipeError, match="expected a mapping of example keys"):
        load_settings(Example, "example", path, {"name": "n"})


def test_flags_are_made_from_the_fields_with_their_help_type_and_choices(capsys):
    parser = cli.Parser(prog="x")
    add_flags(parser, Example)
    args = parser.parse_args(["--name", "n", "--count", "4", "--mode", "b", "--words", "p,q"])
    assert vars(args) == {"name": "n", "count": 4, "mode": "b", "words": "p,q"}  # only what was given
    assert vars(parser.parse_args(["--name", "n"])) == {"name": "n"}
    help_text = parser.format_help()
    assert "a number (default: 3)" in help_text and "{a,b}" in help_text
    with pytest.raises(SystemExit):
        parser.parse_args(["--name", "n", "--count", "four"])
    assert "argument --count: invalid int value: 'four'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args([])  # a field without a default is a required flag
    assert "the following arguments are required: --name" in capsys.readouterr().err


@pytest.mark.parametrize("verb", [v for v in cli.VERBS if v != "eval"])
def test_every_settings_field_of_every_verb_is_a_flag(verb):
    cls = cli.settings_class(verb)
    verbs = next(a for a in cli.build_parser([verb])._actions if isinstance(a, argparse._SubParsersAction))
    dests = {action.dest for action in verbs.choices[verb]._actions}
    if cls is cli.Recipe:
        fields = [f"{s}.{k}" for s, section in field_types(cli.Recipe).items() for k in field_types(section)]
    else:
        fields = [name for name, tp in field_types(cls).items() if not dataclasses.is_dataclass(tp)]
    missing = [name for name in fields if name not in dests]
    assert not missing, f"{verb}: no flag for {missing}"


def test_the_old_flag_spellings_still_parse():
    parse = lambda *argv: vars(cli.build_parser(list(argv)).parse_args(list(argv)))  # noqa: E731
    assert parse("train", "--output-dir", "o", "--data", "a", "b", "--max-steps", "3", "--rope-theta", "1e6",
                 "--overwrite")["data"] == ["a", "b"]
    assert parse("mix", "--output", "o", "--synthetic", "a", "b", "--counts", "plain=1")["synthetic"] == ["a", "b"]
    assert parse("merge", "run", "--output-dir", "o", "--dtype", "float32")["run_dir"] == "run"
    assert parse("plan", "--gpu-memory", "24", "--gpus", "8", "--sequence-parallel", "2", "--json")["json"] is True
    assert parse("demo", "--quick", "--rope-factor", "20")["rope_factor"] == 20.0
    assert parse("synth", "--corpus", "c", "--output", "o", "--min-tokens", "400")["min_tokens"] == 400
    assert parse("eval", "longbench", "--model", "m", "--output-dir", "o", "--longbench-e")["longbench_e"] is True


def sample(f: dataclasses.Field, tp) -> tuple[list[str], object]:
    """Command-line words that set a field to something other than its default, and the value they give."""
    options = [a for a in typing.get_args(tp) if a is not type(None)]
    base = options[0] if typing.get_origin(tp) in (typing.Union, types.UnionType) else tp
    flag = f"--{f.name.replace('_', '-')}"
    if base is bool:
        return ([flag], True) if f.default is False else ([f"--no-{f.name.replace('_', '-')}"], False)
    if typing.get_origin(base) is Literal:
        return [flag, typing.get_args(base)[-1]], typing.get_args(base)[-1]
    if typing.get_origin(base) is list:
        item = typing.get_args(base)[0]
        return [flag, "3,4"], [item(3), item(4)] if item is not str else ["3", "4"]
    return [flag, "7"], base(7) if base is not str else "7"


@pytest.mark.parametrize("name", BENCHMARKS)
def test_every_registered_option_reaches_its_benchmark_function(name, tmp_path, monkeypatch, capsys):
    import tenfold.generation

    function, options = benchmark(name)
    received = {}

    def fake(backend, output_dir, **kwargs):
        received.update(kwargs, backend=backend, output_dir=output_dir)
        return {"score": 0.5, "model": {}}

    monkeypatch.setattr(sys.modules[function.__module__], function.__name__, fake)
    monkeypatch.setattr(tenfold.generation, "load_backend", lambda *a, **k: ("backend", a, k))
    argv, expected = ["eval", name, "--model", "m", "--output-dir", str(tmp_path)], {}
    for f in dataclasses.fields(options):
        words, value = sample(f, field_types(options)[f.name])
        argv += words
        expected[f.name] = value
    cli.main(argv)
    assert {k: received[k] for k in expected} == expected
    assert received["overwrite"] is False and received["output_dir"] == str(tmp_path)
    assert received["backend"] == ("backend", ("m", "transformers", None, None), {"chat_template": "tokenizer"})
    assert f"{name}: score 0.5000" in capsys.readouterr().out


@pytest.mark.parametrize("name", BENCHMARKS)
def test_a_benchmarks_options_are_its_functions_keywords_with_the_same_defaults(name):
    function, options = benchmark(name)
    parameters = inspect.signature(function).parameters
    takes_more = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    for f in dataclasses.fields(options):
        assert f.name in parameters or takes_more, f"{name}: {f.name} is no keyword of {function.__name__}"
        if f.name in parameters:
            assert parameters[f.name].default == f.default, f"{name}.{f.name}: Options and function disagree"
        assert f.metadata["help"], f"{name}.{f.name} has no help"
    shared = set(field_types(options)) & set(field_types(EvalSettings))
    assert not shared, f"{name}: options {shared} clash with the model flags"


def test_a_suites_benchmark_options_are_checked_and_coerced():
    assert benchmark_options("needle", {"lengths": "300,400", "preset": "original"}) == {
        "lengths": [300, 400], "preset": "original"}
    with pytest.raises(RecipeError, match="s.yaml: unknown passkey key 'lenghts'; allowed: lengths, depths"):
        benchmark_options("passkey", {"lenghts": [1]}, "s.yaml")
    with pytest.raises(RecipeError, match="mmlu.preset: 'harness' is not allowed"):
        benchmark_options("mmlu", {"preset": "harness"})


def test_mix_counts_are_a_typed_field_checked_with_the_same_messages(capsys):
    from tenfold.mix import MixSettings

    assert MixSettings("o", counts="plain=0.25").counts == {"synthetic": "all", "instruct": 12000, "plain": 0.25}
    assert MixSettings("o", counts={"plain": 3}).counts["plain"] == 3
    with pytest.raises(RecipeError, match="--counts: unknown source 'books'; use synthetic, instruct, plain"):
        MixSettings("o", counts={"books": 3})
    with pytest.raises(SystemExit) as exit:
        cli.main(["mix", "--output", "o.jsonl", "--counts", "plain=lots", "--tokenizer", "tenfold/tiny-llama"])
    assert exit.value.code == 2
    assert capsys.readouterr().err.strip() == ("tenfold mix: error: command line: --counts plain=lots: give all, a "
                                               "record count or a fraction like 0.5")


def test_plan_settings_check_the_degrees():
    from tenfold.plan import PlanSettings

    with pytest.raises(RecipeError, match="--sequence-parallel 3 must divide --gpus 8"):
        PlanSettings(gpus=8, sequence_parallel=3)


def test_one_verbs_parser_imports_no_other_verbs_modules():
    """`tenfold synth` starts without torch or transformers (benchmarks/synth_speed.py measures its start-up),
    and no verb's parser imports another verb's settings module."""
    code = ("import sys, json; from tenfold.cli import build_parser; build_parser(sys.argv[1:]); "
            "print(json.dumps(sorted(m for m in sys.modules if m in ('torch', 'transformers') or "
            "m.split('.')[:2] in (['tenfold', v] for v in ('synth', 'mix', 'merge', 'plan', 'demo', 'eval', "
            "'train')))))")
    run = lambda *argv: json.loads(subprocess.run([sys.executable, "-c", code, *argv], capture_output=True,  # noqa: E731
                                                  text=True, check=True).stdout)
    assert not [m for m in run("synth", "--corpus", "c") if not m.startswith("tenfold.synth")]
    assert run("mix") == ["tenfold.mix"]
    assert run("train") == [] and run("eval") == ["tenfold.eval"]
    assert not [m for m in run("eval", "ruler") if m in ("torch", "transformers") or m.startswith("tenfold.synth")]
