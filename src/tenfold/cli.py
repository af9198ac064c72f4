"""The `tenfold` command: one verb, one function; parse, call, say where the outputs went."""

from __future__ import annotations

import argparse
import json
import sys

from tenfold.recipe import RecipeError, load_recipe, recipe_keys

# Short flags for the keys users set most; every recipe key also has its own --section.key flag.
ALIASES = {"output_dir": "train.output_dir", "data": "data.train_files", "max_steps": "train.max_steps",
           "rope_theta": "rope.theta"}


def add_recipe_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", help="YAML recipe (see recipes/); flags below override its keys")
    parser.add_argument("--output-dir", dest="output_dir", default=argparse.SUPPRESS, help="= --train.output_dir")
    parser.add_argument("--data", nargs="+", default=argparse.SUPPRESS, help="= --data.train_files (JSONL files)")
    parser.add_argument("--max-steps", dest="max_steps", default=argparse.SUPPRESS, help="= --train.max_steps")
    parser.add_argument("--rope-theta", dest="rope_theta", default=argparse.SUPPRESS, help="= --rope.theta")
    keys = parser.add_argument_group("recipe keys")
    for key, tp in recipe_keys().items():
        keys.add_argument(f"--{key}", dest=key, metavar="VALUE", default=argparse.SUPPRESS,
                          help=getattr(tp, "__name__", str(tp)).replace("typing.", ""))


def recipe_from_args(args: argparse.Namespace):
    values = vars(args)
    overrides = {ALIASES.get(name, name): value for name, value in values.items()
                 if name in ALIASES or "." in name}
    return load_recipe(values.get("recipe"), overrides)


def cmd_train(args: argparse.Namespace) -> None:
    from tenfold.train.loop import train

    recipe = recipe_from_args(args)
    summary = train(recipe)
    loss = summary["final_loss"]
    print(f"trained {summary['steps']} steps, {summary['tokens_seen']} tokens, final loss "
          f"{loss:.4f}; adapter in {recipe.train.output_dir}/adapter, summary in {recipe.train.output_dir}/summary.json")


def cmd_merge(args: argparse.Namespace) -> None:
    from tenfold.train.merge import merge

    out = merge(args.run_dir, args.output_dir, args.dtype)
    rope = json.loads((out / "config.json").read_text())["rope_parameters"]
    print(f"merged model in {out} (RoPE {rope})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tenfold", description="Extend a causal LM's context window ten-fold.")
    verbs = parser.add_subparsers(dest="verb", required=True)

    train = verbs.add_parser("train", help="QLoRA context extension with a raised RoPE base")
    add_recipe_flags(train)
    train.set_defaults(func=cmd_train)

    merge = verbs.add_parser("merge", help="fold a trained adapter into a standalone model directory")
    merge.add_argument("run_dir", help="output directory of `tenfold train` (or its adapter/ folder)")
    merge.add_argument("--output-dir", required=True)
    merge.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    merge.set_defaults(func=cmd_merge)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    try:
        for flag in unknown:  # an unknown --section.key gets the recipe's message, with the allowed keys
            if flag.startswith("--") and "." in flag:
                load_recipe(None, {flag[2:].split("=")[0]: None})
        if unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        args.func(args)
    except (RecipeError, FileNotFoundError, ValueError) as e:
        print(f"tenfold {args.verb}: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
