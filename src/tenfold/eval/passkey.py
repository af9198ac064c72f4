"""`tenfold eval passkey`: find a 5-digit pass key hidden in repeated filler text (beyond the paper).

The construction of the paper authors' eval_passkey.py (FlagEmbedding longllm_qlora): the
landmark-attention filler ("The grass is green. ...") cut to each length in the model's tokens,
the key line inserted at each depth (at a sentence boundary), the question after it, the chat
template around it, greedy decoding. Score: the first integer in the answer equals the key.
Keys come from a seeded generator, one per cell, so every run asks the same questions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tenfold.config import setting
from tenfold.errors import UserError
from tenfold.eval.haystack import fill, insertion_point
from tenfold.eval.metrics import first_integer
from tenfold.eval.plots import heatmap
from tenfold.eval.runner import check_length, claim_predictions, describe, mean, run_cases, write_outputs

PREFIX = ("There is an important infomation hidden in the following context. Find the information and memorize it. "
          "I will quiz you about the important information there.\n")  # sic, as in the paper's code
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
KEY_LINE = "\n\nThe pass key is {key}. Remember it. {key} is the pass key.\n\n"
QUESTION = "\n\nWhat is the pass key?"
LENGTHS = [int(x) for x in np.linspace(8192, 131072, 20).astype(int)]
DEPTHS = [int(x) for x in np.linspace(0, 100, 10).astype(int)]


def build_cases(tokenizer, lengths: list[int], depths: list[float], seed: int = 123) -> list[dict]:
    def encode(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    rng = np.random.default_rng(seed)
    fixed = len(encode(PREFIX)) + len(encode(KEY_LINE.format(key=10000))) + len(encode(QUESTION))
    filler = fill(encode(FILLER * 64), max(lengths))
    cases = []
    for length in lengths:
        if length - fixed < 1:
            raise UserError(f"passkey: length {length} leaves no room for filler around the {fixed}-token "
                            f"description, key and question; use longer lengths")
        context = filler[:length - fixed]
        for depth in depths:
            key = int(rng.integers(10**4, 10**5))
            position = insertion_point(tokenizer, context, depth)
            text = (PREFIX + tokenizer.decode(context[:position]) + KEY_LINE.format(key=key)
                    + tokenizer.decode(context[position:]) + QUESTION)
            cases.append({"id": f"L{length}-D{depth:g}", "length": length, "depth": depth, "key": key, "prompt": text})
    return cases


@dataclass
class Options:
    """`tenfold eval passkey` flags and a suite's passkey: keys, each a keyword argument of run_passkey."""
    lengths: list[int] | None = setting(None, "comma-separated context lengths (default: 8192..131072, 20 steps)")
    depths: list[float] | None = setting(None, "comma-separated depth percents (default: 0, 11, ..., 100)")
    max_new_tokens: int = setting(50, "tokens a prediction may have")
    seed: int = setting(123, "seed of the pass keys")
    training_length: int | None = setting(None, "marked on the heatmap (default: what tenfold train recorded, for a "
                                                "model it trained)")


def run_passkey(backend, output_dir: str | Path, lengths: list[int] | None = None, depths: list[float] | None = None,
                max_new_tokens: int = 50, seed: int = 123, training_length: int | None = None,
                overwrite: bool = False) -> dict:
    """Run the grid into output_dir (passkey.json, passkey.png, passkey.predictions.jsonl); returns the summary."""
    lengths = sorted(lengths or LENGTHS)
    depths = sorted(depths if depths is not None else DEPTHS)
    check_length(backend, "passkey", max(lengths) + backend.prompt_length(""), max_new_tokens)
    out = Path(output_dir)
    claim_predictions(backend, out / "passkey.predictions.jsonl",
                      {"seed": seed, "max_new_tokens": max_new_tokens}, overwrite)
    cases = build_cases(backend.tokenizer, lengths, depths, seed)

    def score(case: dict, prediction: str) -> dict:
        return {"score": float(first_integer(prediction) == case["key"])}

    cells = run_cases(backend, cases, out / "passkey.predictions.jsonl", max_new_tokens, score, desc="passkey")
    model = describe(backend, training_length)
    heatmap(cells, out / "passkey.png", f"Passkey retrieval: {backend.name} (exact match)", lengths=model)
    summary = {"benchmark": "passkey", "model": model, "scorer": "exact-match", "seed": seed,
               "score": mean(c["score"] for c in cells),
               "by_length": {str(L): mean(c["score"] for c in cells if c["length"] == L) for L in lengths}}
    return write_outputs(out, "passkey", cells, summary)
