"""The paper's reported rows: transcribed right (each Avg follows from its rows) and found by model name."""

import pytest

from tenfold.eval.longbench import CATEGORIES as LONGBENCH_CATEGORIES
from tenfold.eval.mmlu import CATEGORIES as MMLU_CATEGORIES
from tenfold.eval.reference import BASE, EXTENDED, PAPER_REPORTED, paper_reported, reference_model


@pytest.mark.parametrize("row", [BASE, EXTENDED])
def test_each_reported_average_follows_from_its_rows(row):
    longbench, mmlu = PAPER_REPORTED[row]["longbench"], PAPER_REPORTED[row]["mmlu"]
    assert list(longbench["categories"]) == list(LONGBENCH_CATEGORIES)
    datasets = {name: len(names) for name, names in LONGBENCH_CATEGORIES.items()}  # Avg: mean of the 16 datasets
    weighted = sum(datasets[c] * v for c, v in longbench["categories"].items()) / sum(datasets.values())
    assert weighted == pytest.approx(longbench["avg"], abs=0.006)
    assert list(mmlu["categories"]) == list(MMLU_CATEGORIES)
    subjects = {name: len(names) for name, names in MMLU_CATEGORIES.items()}  # Avg: mean of the 57 subjects
    weighted = sum(subjects[c] * v for c, v in mmlu["categories"].items()) / sum(subjects.values())
    assert weighted == pytest.approx(mmlu["score"], abs=0.00006)


def test_rows_are_found_by_hub_id_or_folder_name_and_nothing_else():
    assert reference_model("meta-llama/Meta-Llama-3-8B-Instruct") == BASE
    assert reference_model("/models/Llama-3-8B-Instruct-80K-QLoRA-Merged/") == EXTENDED
    assert reference_model("HuggingFaceTB/SmolLM2-135M-Instruct") is None
    assert paper_reported("namespace-Pt/Llama-3-8B-Instruct-80K-QLoRA", "longbench")["avg"] == 47.19
    assert paper_reported("namespace-Pt/Llama-3-8B-Instruct-80K-QLoRA", "infbench") is None  # not in the card read
    assert paper_reported("meta-llama/Meta-Llama-3-8B-Instruct", "infbench")["scores"]["longbook_qa_eng"] == 7.00


def test_the_suite_table_puts_the_reported_numbers_on_the_measured_rows():
    from tenfold.eval.suite import reported_rows, summary_rows

    measured = {"preset": "paper", "score": 40.0, "categories": {"Single-Doc QA": 30.0, "Code": 50.0},
                "paper_reported": paper_reported("meta-llama/Meta-Llama-3-8B-Instruct", "longbench")}
    rows, reported = summary_rows("longbench", measured), reported_rows("longbench", measured)
    assert reported["longbench (paper)"] == 43.20 and rows["longbench (paper)"] == 40.0
    assert reported["longbench categories Single-Doc QA"] == 37.33 and "longbench categories Code" in rows
    assert reported_rows("longbench", {**measured, "paper_reported": None}) == {}
    infbench = {"preset": "paper", "score": 10.0, "scores": {"longbook_qa_eng": 9.0, "longbook_sum_eng": 11.0},
                "paper_reported": paper_reported("meta-llama/Meta-Llama-3-8B-Instruct", "infbench")}
    assert reported_rows("infbench", infbench) == {"infbench longbook_qa_eng": 7.00, "infbench longbook_sum_eng": 16.40}
