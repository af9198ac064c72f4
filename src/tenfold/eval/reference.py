"""The paper's reported numbers, so a report on Llama-3-8B-Instruct or its 80K extension prints "paper reported"
beside "measured".

Source: the model card of namespace-Pt/Llama-3-8B-Instruct-80K-QLoRA (the paper's released adapter), which
publishes the paper's tables: LongBench (16 English datasets; Avg is the mean of the 16 dataset scores, the base
model truncated to 8K, the 80K model to 31.5K), zero-shot MMLU (4 categories; Avg is the mean of the 57 subjects),
and InfiniteBench at 80K. Checked: each Avg follows from its rows (LongBench: 3 x 4 categories + 2 x 2 datasets
over 16; MMLU: 18 STEM, 12 Social Sciences, 13 Humanities, 14 Others subjects over 57). The 80K model's
InfiniteBench row is not in the stored copies of the card read here, so it is left out rather than guessed.
Values are on each benchmark's own scale: LongBench and InfiniteBench 0-100, MMLU 0-1 (tenfold's summaries).
"""

from __future__ import annotations

from pathlib import PurePath

SOURCE = "https://huggingface.co/namespace-Pt/Llama-3-8B-Instruct-80K-QLoRA (model card, the paper's tables)"
BASE, EXTENDED = "Llama-3-8B-Instruct", "Llama-3-8B-Instruct-80K-QLoRA"
LONGBENCH_COLUMNS = ("Single-Doc QA", "Multi-Doc QA", "Summarization", "Few-shot", "Synthetic", "Code")
MMLU_COLUMNS = ("STEM", "Social Sciences", "Humanities", "Other")

PAPER_REPORTED = {
    BASE: {
        "longbench": {"categories": dict(zip(LONGBENCH_COLUMNS, (37.33, 36.04, 26.83, 69.56, 37.75, 53.24))),
                      "avg": 43.20, "note": "truncated to 8K"},
        "mmlu": {"categories": dict(zip(MMLU_COLUMNS, (0.5387, 0.7566, 0.6944, 0.6975))), "score": 0.6591},
        "infbench": {"scores": {"longbook_qa_eng": 7.00, "longbook_sum_eng": 16.40}, "note": "truncated to 8K"},
    },
    EXTENDED: {
        "longbench": {"categories": dict(zip(LONGBENCH_COLUMNS, (43.57, 43.07, 28.93, 69.15, 48.50, 51.95))),
                      "avg": 47.19, "note": "truncated to 31.5K"},
        "mmlu": {"categories": dict(zip(MMLU_COLUMNS, (0.5310, 0.7324, 0.6732, 0.6879))), "score": 0.6444},
    },
}
# What a model is called on the hub or on disk -> the row it is compared with.
NAMES = {"meta-llama/meta-llama-3-8b-instruct": BASE, "meta-llama-3-8b-instruct": BASE,
         "namespace-pt/llama-3-8b-instruct-80k-qlora": EXTENDED, "llama-3-8b-instruct-80k-qlora": EXTENDED,
         "namespace-pt/llama-3-8b-instruct-80k-qlora-merged": EXTENDED,
         "llama-3-8b-instruct-80k-qlora-merged": EXTENDED}


def reference_model(model: str | None) -> str | None:
    """The paper's row for a model given by hub id or by a folder named like it, else None."""
    if not model:
        return None
    name = model.strip().rstrip("/").lower()
    return NAMES.get(name) or NAMES.get(PurePath(name).name)


def paper_reported(model: str | None, benchmark: str) -> dict | None:
    """The paper's numbers for this model and benchmark (with their source), or None where it reported none."""
    row = reference_model(model)
    numbers = PAPER_REPORTED.get(row, {}).get(benchmark) if row else None
    return {"model": row, "source": SOURCE, **numbers} if numbers else None
