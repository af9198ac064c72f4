"""The `tenfold` command: one verb, one function; parse, call, say where the outputs went."""

from __future__ import annotations

import argparse
import json
import sys

from tenfold.errors import debug_requested, one_line
from tenfold.eval import BENCHMARKS
from tenfold.recipe import load_recipe, recipe_keys

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
    import shlex

    from tenfold.train.loop import kept_checkpoint, train

    recipe = recipe_from_args(args)
    try:
        summary = train(recipe, overwrite=args.overwrite)
    except KeyboardInterrupt:
        print(f"tenfold train: interrupted; {kept_checkpoint(recipe.train.output_dir)}; to resume, run: "
              f"{shlex.join(['tenfold', *sys.argv[1:]])}", file=sys.stderr)
        sys.exit(130)
    if summary.get("already_finished"):
        return
    loss = summary["final_loss"]
    print(f"trained {summary['steps']} steps, {summary['tokens_seen']} tokens, final loss "
          f"{loss:.4f}; adapter in {recipe.train.output_dir}/adapter, summary in {recipe.train.output_dir}/summary.json")


def cmd_merge(args: argparse.Namespace) -> None:
    from tenfold.merge import merge

    out = merge(args.run_dir, args.output_dir, args.dtype, args.overwrite)
    rope = json.loads((out / "config.json").read_text())["rope_parameters"]
    print(f"merged model in {out} (RoPE {rope})")


def cmd_synth(args: argparse.Namespace) -> None:
    from tenfold.synth.run import synth, synth_settings

    flags = {k: v for k, v in vars(args).items() if k not in ("verb", "func", "recipe")}
    summary = synth(synth_settings(args.recipe, flags))
    written, rejected = summary["records_written"], sum(summary["rejected"].values())
    print(f"synth: {sum(written.values())} new records ({', '.join(f'{k} {v}' for k, v in written.items()) or 'none'}), "
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


def cmd_mix(args: argparse.Namespace) -> None:
    from tenfold.mix import mix, parse_counts

    summary = mix(args.output, args.synthetic, args.instruct, args.plain, parse_counts(args.counts), args.seed,
                  args.tokenizer, args.max_length, args.recipe)
    parts = ", ".join(f"{name} {s['records']} records / {s['tokens']} tokens" for name, s in summary["sources"].items())
    print(f"mix: {summary['records']} records ({parts}) in {args.output}; summary in {args.output}.summary.json")


def cmd_plan(args: argparse.Namespace) -> None:
    from tenfold.plan import format_plan, plan

    recipe = recipe_from_args(args)
    result = plan(recipe, args.gpu_memory, args.gpus, args.length, args.device, args.fsdp, args.sequence_parallel)
    print(json.dumps(result, indent=2) if args.json else format_plan(result))


def cmd_demo(args: argparse.Namespace) -> None:
    from tenfold.demo.run import demo

    results = demo(args.output_dir, args.quick, args.rope_factor, args.overwrite)
    print(f"demo: finished in {results['seconds']:.0f} s; report in {args.output_dir}/report.md, "
          f"numbers in {args.output_dir}/results.json")


def int_list(text: str) -> list[int]:
    return [int(float(v)) for v in text.split(",") if v.strip()]


def float_list(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


TRAINING_LENGTH_HELP = "marked on the heatmap (default: what tenfold train recorded, for a model it trained)"
# `tenfold eval NAME`: NAME (a key of tenfold.eval.BENCHMARKS, whose function is called as
# fn(backend, output_dir, **its flags) and returns a summary dict with "score") -> (help, its own flags).
# To add a benchmark, add it to BENCHMARKS and one row here whose flags' dest names are the function's keyword
# arguments (None = the function's default).
EVAL_FLAGS = {
    "needle": ("needle in a haystack (paper or original preset)", [
        ("--preset", dict(default="paper", choices=["paper", "original"])),
        ("--lengths", dict(type=int_list, help="comma-separated context lengths in tokens (default: the preset's)")),
        ("--depths", dict(type=float_list, help="comma-separated depth percents (default: the preset's)")),
        ("--haystack", dict(help="text file, directory of .txt files, 'paul-graham' or 'toy' (default)")),
        ("--scorer", dict(default="rouge", choices=["rouge", "judge"])),
        ("--judge-model", dict(help="the judge's model name on the OpenAI-compatible endpoint")),
        ("--judge-base-url", dict(help="the judge's endpoint (default: OPENAI_BASE_URL or OpenAI)")),
        ("--training-length", dict(type=int, help=TRAINING_LENGTH_HELP))]),
    "passkey": ("pass key in repeated filler text (length x depth grid)", [
        ("--lengths", dict(type=int_list, help="comma-separated context lengths (default: 8192..131072, 20 steps)")),
        ("--depths", dict(type=float_list, help="comma-separated depth percents (default: 0, 11, ..., 100)")),
        ("--seed", dict(type=int)),
        ("--training-length", dict(type=int, help=TRAINING_LENGTH_HELP))]),
    "topic": ("LongChat topic retrieval: accuracy per number of topics", [
        ("--data", dict(help="LongChat testcases dir or topic_retrieval.json (default: generated conversations)")),
        ("--num-topics", dict(type=int_list, help="comma-separated groups (default: 5,10,...,70)")),
        ("--samples", dict(type=int, help="generated records per group (default 10)")),
        ("--seed", dict(type=int))]),
    "ruler": ("RULER synthetic tasks: multi-key/value/query needles, vt, cwe", [
        ("--tasks", dict(type=lambda text: [v for v in text.split(",") if v], help="comma-separated (default: all 8)")),
        ("--lengths", dict(type=int_list, help="comma-separated (default: 4096,...,131072)")),
        ("--samples", dict(type=int, help="samples per task and length (default 20)")),
        ("--haystack", dict(help="essay text for niah_multikey_1/multivalue/multiquery (default: noise)")),
        ("--seed", dict(type=int))]),
    "longbench": ("LongBench v1 with the official prompts and metrics", [
        ("--preset", dict(default="official", choices=["official", "paper"],
                          help="Avg over the 6 categories (official) or the 16 English datasets (paper)")),
        ("--datasets", dict(type=lambda text: [v for v in text.split(",") if v], help="comma-separated (default: the 16 English)")),
        ("--truncate-length", dict(type=int, help="prompt tokens after the middle cut (default: model length - 500)")),
        ("--longbench-e", dict(action="store_true", help="LongBench-E: scores per length bucket")),
        ("--data-dir", dict(help="LongBench's <name>.jsonl files (default: data.zip from the HF hub)")),
        ("--config-dir", dict(help="LongBench/config with dataset2prompt.json, dataset2maxlen.json (default: download)")),
        ("--limit", dict(type=int, help="only the first N records of each dataset"))]),
    "mmlu": ("zero-shot MMLU by the answer letters' next-token scores", [
        ("--preset", dict(default="paper", choices=["paper", "lm-eval-harness"],
                          help="chat template + 'A', mean of subjects (paper) or raw + ' A', mean of questions")),
        ("--data", dict(help="MMLU folder (test/<subject>_test.csv) or JSONL file (default: cais/mmlu from the HF hub)")),
        ("--subjects", dict(type=lambda text: [v for v in text.split(",") if v], help="comma-separated (default: all)")),
        ("--limit", dict(type=int, help="only the first N questions of each subject"))]),
    "infbench": ("InfiniteBench longbook_qa_eng and longbook_sum_eng", [
        ("--preset", dict(default="paper", choices=["paper", "official"],
                          help="chat template + rouge-L (paper) or raw prompt + ROUGE-Lsum (official)")),
        ("--tasks", dict(type=lambda text: [v for v in text.split(",") if v], help="comma-separated (default: both)")),
        ("--truncate-length", dict(type=int, help="prompt tokens after the middle cut (default: 80000, the paper's)")),
        ("--template-set", dict(help="InfiniteBench prompt set: yarn_mistral (default, the paper's), gpt4, claude2")),
        ("--prompts", dict(help="InfiniteBench's src/prompt.py (default: download)")),
        ("--data-dir", dict(help="InfiniteBench's <task>.jsonl files (default: the HF hub)")),
        ("--limit", dict(type=int, help="only the first N records of each task"))]),
}
EVAL_COMMON = {"verb", "func", "benchmark", "model", "output_dir", "backend", "rope_theta", "tokenizer", "max_length",
               "batch_size", "dtype", "base_url", "suite"}


def cmd_eval(args: argparse.Namespace) -> None:
    from tenfold.eval import run_benchmark
    from tenfold.generation import load_backend

    if args.benchmark == "all":
        from tenfold.eval.suite import run_suite

        table = run_suite(args.suite, args.output_dir, args.overwrite)
        print(f"evaluated {len(table['models'])} models on {', '.join(table['benchmarks'])}; "
              f"table in {args.output_dir}/summary.md and {args.output_dir}/summary.json")
        return
    options = {"transformers": {"dtype": args.dtype, "batch_size": args.batch_size, "max_length": args.max_length},
               "openai": {"base_url": args.base_url, "max_length": args.max_length},
               "vllm": {"max_length": args.max_length}}[args.backend]
    backend = load_backend(args.model, args.backend, args.rope_theta, args.tokenizer,
                           **{k: v for k, v in options.items() if v is not None})
    kwargs = {k: v for k, v in vars(args).items() if k not in EVAL_COMMON and v is not None}
    summary = run_benchmark(args.benchmark, backend, args.output_dir, **kwargs)
    lengths = "; ".join(f"{key.replace('_', ' ')} {summary['model'][key]:,}" for key in
                        ("native_length", "training_length") if summary["model"].get(key))
    print(f"{args.benchmark}: score {summary['score']:.4f} ({summary.get('scorer', 'mean')}); "
          f"{lengths + '; ' if lengths else ''}results in {args.output_dir}/{args.benchmark}.json")


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the fix (argparse prints the whole usage first)."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message}; see {self.prog} --help", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="tenfold", description="Extend a causal LM's context window ten-fold.")
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,  # main() reads it from argv
                        help="show the traceback of an error (anywhere on the line; or TENFOLD_DEBUG=1)")
    verbs = parser.add_subparsers(dest="verb", required=True)

    add_training_verbs(verbs)
    add_synth_verb(verbs)
    add_mix_and_demo_verbs(verbs)
    add_eval_verb(verbs)
    return parser


def add_training_verbs(verbs) -> None:
    train = verbs.add_parser("train", help="QLoRA context extension with a raised RoPE base")
    add_recipe_flags(train)
    train.add_argument("--overwrite", action="store_true",
                       help="train from step 0 over a finished run (or its checkpoints) in the output directory")
    train.set_defaults(func=cmd_train)

    plan = verbs.add_parser("plan", help="peak memory of a recipe's training step and the longest context that fits")
    add_recipe_flags(plan)
    plan.add_argument("--gpu-memory", type=float, default=80.0, help="GiB per GPU (default 80)")
    plan.add_argument("--gpus", type=int, default=1, help="data-parallel GPUs to plan for (default 1)")
    plan.add_argument("--length", type=int, help="tokens per sequence (default: the recipe's data.max_length)")
    plan.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="plan for a GPU or this CPU")
    plan.add_argument("--fsdp", type=int, default=1, help="GPUs the weights and optimizer state are sharded over")
    plan.add_argument("--sequence-parallel", type=int, default=1, help="GPUs each sequence is split over")
    plan.add_argument("--json", action="store_true", help="machine-readable output")
    plan.set_defaults(func=cmd_plan)

    merge = verbs.add_parser("merge", help="fold a trained adapter into a standalone model directory")
    merge.add_argument("run_dir", help="output directory of `tenfold train` (or its adapter/ folder)")
    merge.add_argument("--output-dir", required=True)
    merge.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    merge.add_argument("--overwrite", action="store_true", help="replace the contents of a non-empty --output-dir")
    merge.set_defaults(func=cmd_merge)


def add_synth_verb(verbs) -> None:
    synth = verbs.add_parser("synth", help="long-context QA conversations from long documents (the paper's data)")
    synth.add_argument("--corpus", required=True,
                       help="folder of .txt/.md, .jsonl, .parquet, saved dataset, hub id, or tenfold/toy")
    synth.add_argument("--output", required=True, help="JSONL of conversation records (appended; a rerun resumes)")
    synth.add_argument("--generator", choices=["offline", "openai", "transformers"], help="default: offline")
    synth.add_argument("--tasks", help="comma-separated: single_detail,multi_detail,multi_detail_heterogeneous,biography")
    synth.add_argument("--tokenizer", help="the target model's tokenizer (default: the --recipe's model.name; "
                       "needed otherwise, except on --corpus tenfold/toy)")
    synth.add_argument("--min-tokens", dest="min_tokens", type=int, help="shortest document, target tokens (64000)")
    synth.add_argument("--max-tokens", dest="max_tokens", type=int, help="longest document, target tokens (80000)")
    synth.add_argument("--recipe", help="YAML file whose synth: section sets any synth key "
                       "(its model.name: the tokenizer)")
    synth.add_argument("--model", help="the generator's model (openai, transformers)")
    synth.add_argument("--base-url", dest="base_url", help="OpenAI-compatible endpoint; key from $OPENAI_API_KEY")
    synth.add_argument("--concurrency", type=int, help="requests in flight at most (openai; default 32; halved "
                       "on a 429 and grown back on successes)")
    synth.add_argument("--requests-per-minute", dest="requests_per_minute", type=float,
                       help="the provider's request limit (openai; default: none)")
    synth.add_argument("--tokens-per-minute", dest="tokens_per_minute", type=float,
                       help="the provider's token limit, prompt + max_new_tokens per request (openai; default: none)")
    synth.add_argument("--request-timeout", dest="request_timeout", type=float,
                       help="seconds before a request is given up and retried (openai; default 600)")
    synth.add_argument("--max-contexts", dest="max_contexts", type=int, help="stop after this many records' contexts")
    synth.add_argument("--chunk-tokens", dest="chunk_tokens", type=int, help="chunk size in target tokens (4096)")
    synth.add_argument("--language", help="keep only documents in this language (langdetect code, e.g. en)")
    synth.add_argument("--text-field", dest="text_field", help="the text field of JSONL/Parquet/dataset rows (text)")
    synth.add_argument("--cache-dir", dest="cache_dir", help="response cache (default: OUTPUT.cache/)")
    synth.set_defaults(func=cmd_synth)


def add_mix_and_demo_verbs(verbs) -> None:
    mix = verbs.add_parser("mix", help="one shuffled training file from synthetic, instruction and plain-text data")
    mix.add_argument("--output", required=True)
    mix.add_argument("--synthetic", nargs="*", default=[], help="JSONL files from `tenfold synth`")
    mix.add_argument("--instruct", nargs="*", default=[], help="LongAlpaca-style JSONL/Parquet files or hub dataset ids")
    mix.add_argument("--plain", nargs="*", default=[], help="plain-text JSONL/Parquet files or hub dataset ids")
    mix.add_argument("--counts", default="synthetic=all,instruct=12000,plain=5000",
                     help="per source: all, a record count, or a fraction like 0.5 (default: the paper's mix)")
    mix.add_argument("--seed", type=int, default=42)
    mix.add_argument("--tokenizer", help="the target model's: counts tokens and cuts plain text to --max-length "
                     "(default: the --recipe's model.name, else the one in the --synthetic files' .summary.json; "
                     "needed otherwise, except on tenfold/toy inputs)")
    mix.add_argument("--recipe", help="YAML recipe whose model.name is the target model (for its tokenizer)")
    mix.add_argument("--max-length", dest="max_length", type=int, default=81920, help="plain text is cut to this many tokens")
    mix.set_defaults(func=cmd_mix)

    demo = verbs.add_parser("demo", help="the whole method on a tiny model on the CPU: base, RoPE-only, RoPE + QLoRA")
    demo.add_argument("--quick", action="store_true", help="a small grid and a few training steps (under 2 minutes)")
    demo.add_argument("--output-dir", default="runs/demo")
    demo.add_argument("--rope-factor", type=float, help="RoPE base multiplier (default: recipes/demo-cpu.yaml's, x400)")
    demo.add_argument("--overwrite", action="store_true",
                      help="discard predictions in --output-dir made otherwise (default: refuse them)")
    demo.set_defaults(func=cmd_demo)


def add_eval_verb(verbs) -> None:
    evaluate = verbs.add_parser("eval", help="needle, passkey, RULER, topic retrieval, ...; `all` runs a suite")
    benchmarks = evaluate.add_subparsers(dest="benchmark", required=True)
    for name in BENCHMARKS:
        help_text, flags = EVAL_FLAGS[name]
        bench = benchmarks.add_parser(name, help=help_text)
        bench.add_argument("--model", required=True, help="model dir, hub id, tenfold/<name>, a .gguf file (or a "
                           "dir holding one), or a `tenfold train` output")
        bench.add_argument("--output-dir", required=True)
        bench.add_argument("--backend", default="transformers", choices=["transformers", "openai", "vllm"])
        bench.add_argument("--rope-theta", type=float, help="override the RoPE base in memory (training-free extension)")
        bench.add_argument("--tokenizer", help="tokenizer to count tokens with (default: the model's)")
        bench.add_argument("--max-length", type=int, help="the longest input to allow (default: the model's config)")
        bench.add_argument("--batch-size", type=int, help="prompts per generate call (transformers)")
        bench.add_argument("--dtype", choices=["auto", "bfloat16", "float16", "float32"])
        bench.add_argument("--base-url", help="OpenAI-compatible endpoint (--backend openai); key from OPENAI_API_KEY")
        bench.add_argument("--overwrite", action="store_true",
                           help="discard predictions in --output-dir made otherwise (default: refuse them)")
        for flag, spec in flags:
            bench.add_argument(flag, **spec)
    suite = benchmarks.add_parser("all", help="run the suite in a YAML file's `eval:` section; one summary table")
    suite.add_argument("--suite", required=True, help="YAML with an eval: section (models, benchmarks)")
    suite.add_argument("--output-dir", required=True)
    suite.add_argument("--overwrite", action="store_true",
                       help="discard predictions in --output-dir made otherwise (default: refuse them)")
    evaluate.set_defaults(func=cmd_eval)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = debug_requested(argv)
    parser = build_parser()
    args, unknown = parser.parse_known_args([a for a in argv if a != "--debug"])
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
