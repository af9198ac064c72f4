"""The `tenfold` command: one verb, one function; parse, call, say where the outputs went.

Every verb's flags are made from its settings dataclass (tenfold.config), listed in VERBS; `tenfold eval NAME`
takes its benchmark's flags from the registry (tenfold.eval.BENCHMARKS). Only the verb on the command line is
built in full, so running a verb imports its own modules and no other's (`tenfold synth` starts without torch).
"""

from __future__ import annotations

import argparse
import json
import sys
import typing
from importlib import import_module

from tenfold.config import add_flags, field_types, load_settings
from tenfold.errors import debug_requested, one_line
from tenfold.recipe import Recipe, load_recipe, recipe_keys

# Short flags for the keys users set most; every recipe key also has its own --section.key flag.
ALIASES = {"output_dir": "train.output_dir", "data": "data.train_files", "max_steps": "train.max_steps",
           "rope_theta": "rope.theta"}
# train's one flag that is no recipe key: a run compares its recipe when it resumes, so this must stay out of it.
TRAIN_OVERWRITE = "train from step 0 over a finished run (or its checkpoints) in the output directory"


def add_recipe_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", help="YAML recipe (see recipes/); flags below override its keys")
    keys = recipe_keys()
    for name, key in ALIASES.items():
        many = {"nargs": "+"} if typing.get_origin(keys[key]) is list else {}
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, default=argparse.SUPPRESS, help=f"= --{key}",
                            **many)
    group = parser.add_argument_group("recipe keys")
    for section, cls in field_types(Recipe).items():
        add_flags(group, cls, prefix=f"{section}.")


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    values = vars(args)
    overrides = {ALIASES.get(name, name): value for name, value in values.items()
                 if name in ALIASES or "." in name}
    return load_recipe(values.get("recipe"), overrides)


def given(args: argparse.Namespace, cls) -> dict:
    """The flags of cls's fields that the command line gave (the others are absent: see add_flags)."""
    return {name: value for name, value in vars(args).items() if name in field_types(cls)}


def settings_from_args(cls, section: str, args: argparse.Namespace):
    """The verb's settings: its defaults, then the --recipe file's `section:` (where it has one), then the flags."""
    if cls is Recipe:
        return recipe_from_args(args)
    values = given(args, cls)
    if field_types(cls).get("recipe") is Recipe:  # plan: the recipe is built from its own flags
        return load_settings(cls, section, None, {**values, "recipe": recipe_from_args(args)})
    return load_settings(cls, section, values.get("recipe"), values)


def cmd_train(recipe: Recipe, overwrite: bool = False) -> None:
    import shlex

    from tenfold.train.loop import kept_checkpoint, train

    try:
        summary = train(recipe, overwrite=overwrite)
    except KeyboardInterrupt:
        print(f"tenfold train: interrupted; {kept_checkpoint(recipe.train.output_dir)}; to resume, run: "
              f"{shlex.join(['tenfold', *sys.argv[1:]])}", file=sys.stderr)
        sys.exit(130)
    if summary.get("already_finished"):
        return
    out = recipe.train.output_dir
    print(f"trained {summary['steps']} steps, {summary['tokens_seen']} tokens, final loss "
          f"{summary['final_loss']:.4f}; adapter in {out}/adapter, summary in {out}/summary.json")
    if summary.get("held_out"):
        first, last = summary["held_out"]["evaluations"][0], summary["held_out"]["evaluations"][-1]
        print(f"held-out loss {last['loss']:.4f} at step {last['step']} ({first['loss']:.4f} at step "
              f"{first['step']}); by position in {out}/held_out_loss.png")


def cmd_merge(settings) -> None:
    from tenfold.merge import merge

    out = merge(settings)
    rope = json.loads((out / "config.json").read_text())["rope_parameters"]
    print(f"merged model in {out} (RoPE {rope})")


def cmd_synth(settings) -> None:
    from tenfold.synth.run import synth

    summary = synth(settings)
    written, rejected = summary["records_written"], sum(summary["rejected"].values())
    by_task = ", ".join(f"{k} {v}" for k, v in written.items()) or "none"
    print(f"synth: {sum(written.values())} new records ({by_task}), "
          f"{rejected} replies/items rejected; records in {summary['output']}, summary in "
          f"{summary['output']}.summary.json, length histogram in {summary['histogram']}", flush=True)
    problem = synth_incomplete(summary)
    if problem:
        print(f"tenfold synth: incomplete: {problem}; running the same command again resumes (records "
              f"written are kept, cached replies reused, failed requests asked again)", file=sys.stderr)
        sys.exit(1)


def synth_incomplete(summary: dict) -> str | None:
    """What a synth run left undone, counted by reason, or None when the work asked for is done."""
    def counts(counter: dict) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(counter.items()) if v) or "none"

    if failed := summary["requests"].get("failed_by"):
        return (f"{sum(failed.values())} request(s) failed for good ({counts(failed)}); "
                f"their contexts have no record yet")
    if not summary["records_in_output"]:
        return (f"no record written (documents skipped: {counts(summary['documents_skipped'])}; contexts "
                f"without a usable item: {summary['contexts_without_record']}; replies/items rejected: "
                f"{counts(summary['rejected'])})")
    return None


def cmd_mix(settings) -> None:
    from tenfold.mix import mix

    summary = mix(settings)
    parts = ", ".join(f"{name} {s['records']} records / {s['tokens']} tokens" for name, s in summary["sources"].items())
    print(f"mix: {summary['records']} records ({parts}) in {settings.output}; summary in "
          f"{settings.output}.summary.json")


def cmd_plan(settings) -> None:
    from tenfold.plan import format_plan, plan

    result = plan(settings)
    print(json.dumps(result, indent=2) if settings.json else format_plan(result))


def cmd_demo(settings) -> None:
    from tenfold.demo.run import demo

    results = demo(settings)
    print(f"demo: finished in {results['seconds']:.0f} s; report in {settings.output_dir}/report.md, "
          f"numbers in {settings.output_dir}/results.json")


def cmd_eval(args: argparse.Namespace) -> None:
    if args.benchmark == "all":
        from tenfold.eval.suite import SuiteSettings, run_suite

        s = load_settings(SuiteSettings, "eval", None, given(args, SuiteSettings))
        table = run_suite(s.suite, s.output_dir, s.overwrite)
        print(f"evaluated {len(table['models'])} models on {', '.join(table['benchmarks'])}; "
              f"table in {s.output_dir}/summary.md and {s.output_dir}/summary.json")
        return
    from tenfold.eval import EvalSettings, benchmark, benchmark_options, evaluate

    settings = load_settings(EvalSettings, "eval", None, given(args, EvalSettings))
    options = benchmark_options(args.benchmark, given(args, benchmark(args.benchmark)[1]), "command line")
    summary = evaluate(args.benchmark, settings, options)
    lengths = "; ".join(f"{key.replace('_', ' ')} {summary['model'][key]:,}" for key in
                        ("native_length", "training_length") if summary["model"].get(key))
    reported = summary.get("paper_reported") or {}
    reported = reported.get("avg", reported.get("score"))
    print(f"{args.benchmark}: score {summary['score']:.4f} ({summary.get('scorer', 'mean')})"
          f"{f', paper reported {reported:.4f}' if reported is not None else ''}; {lengths + '; ' if lengths else ''}"
          f"results in {settings.output_dir}/{summary.get('benchmark', args.benchmark)}.json")


# verb -> (its settings "module:Class", the command that runs it and says where the outputs went, help)
VERBS = {
    "train": ("tenfold.recipe:Recipe", cmd_train, "QLoRA context extension with a raised RoPE base"),
    "plan": ("tenfold.plan:PlanSettings", cmd_plan,
             "peak memory of a recipe's training step and the longest context that fits"),
    "merge": ("tenfold.merge:MergeSettings", cmd_merge, "fold a trained adapter into a standalone model directory"),
    "synth": ("tenfold.synth.run:SynthSettings", cmd_synth,
              "long-context QA conversations from long documents (the paper's data)"),
    "mix": ("tenfold.mix:MixSettings", cmd_mix,
            "one shuffled training file from synthetic, instruction and plain-text data"),
    "demo": ("tenfold.demo.run:DemoSettings", cmd_demo,
             "the whole method on a tiny model on the CPU: base, RoPE-only, RoPE + QLoRA"),
    "eval": (None, cmd_eval, "needle, passkey, RULER, topic retrieval, ...; `all` runs a suite"),
}
SUITE_HELP = "run the suite in a YAML file's `eval:` section; one summary table"


def settings_class(verb: str):
    module, name = VERBS[verb][0].split(":")
    return getattr(import_module(module), name)


def run_verb(args: argparse.Namespace) -> None:
    settings = settings_from_args(settings_class(args.verb), args.verb, args)
    if args.verb == "train":
        return cmd_train(settings, args.overwrite)
    VERBS[args.verb][1](settings)


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the fix (argparse prints the whole usage first)."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message}; see {self.prog} --help", file=sys.stderr)
        sys.exit(2)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The command line. Given argv, only the verb (and benchmark) it names gets its flags: the others are
    listed with their help, and their settings' modules are not imported."""
    words = [a for a in argv if not a.startswith("-")] if argv is not None else None
    chosen = lambda *path: words is None or words[:len(path)] == list(path)  # noqa: E731
    parser = Parser(prog="tenfold", description="Extend a causal LM's context window ten-fold.")
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,  # main() reads it from argv
                        help="show the traceback of an error (anywhere on the line; or TENFOLD_DEBUG=1)")
    verbs = parser.add_subparsers(dest="verb", required=True)
    for verb, (_, _, help_text) in VERBS.items():
        sub = verbs.add_parser(verb, help=help_text)
        if verb == "eval" and chosen(verb):
            add_benchmarks(sub, lambda name: chosen("eval", name))
        elif verb != "eval" and chosen(verb):
            add_verb_flags(sub, verb)
            sub.set_defaults(func=run_verb)
    return parser


def add_verb_flags(sub: argparse.ArgumentParser, verb: str) -> None:
    cls = settings_class(verb)
    if cls is Recipe or field_types(cls).get("recipe") is Recipe:
        add_recipe_flags(sub)
    if cls is not Recipe:
        add_flags(sub, cls)
    if verb == "train":
        sub.add_argument("--overwrite", action="store_true", help=TRAIN_OVERWRITE)


def add_benchmarks(evaluate: argparse.ArgumentParser, chosen) -> None:
    from tenfold.eval import BENCHMARKS, EvalSettings, benchmark

    benchmarks = evaluate.add_subparsers(dest="benchmark", required=True)
    for name, (_, help_text) in BENCHMARKS.items():
        bench = benchmarks.add_parser(name, help=help_text)
        if chosen(name):
            add_flags(bench, EvalSettings)
            add_flags(bench, benchmark(name)[1])
    suite = benchmarks.add_parser("all", help=SUITE_HELP)
    if chosen("all"):
        from tenfold.eval.suite import SuiteSettings

        add_flags(suite, SuiteSettings)
    evaluate.set_defaults(func=cmd_eval)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = debug_requested(argv)
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser(argv)
    args, unknown = parser.parse_known_args(argv)
    try:
        for flag in unknown:  # an unknown --section.key gets the recipe's message, with the allowed keys
            if flag.startswith("--") and "." in flag:
                load_recipe(None, {flag[2:].split("=")[0]: None})
        if unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        args.func(args)
    except Exception as e:  # a user error is one line, exit 2; a bug keeps its traceback
        message = one_line(e)
        if debug or message is None:
            raise
        print(f"tenfold {args.verb}: error: {message}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
