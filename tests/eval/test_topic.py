import json

import matplotlib.image
import pytest

from fakes import FakeBackend
from tenfold.cli import main
from tenfold.errors import RecordError
from tenfold.eval.topic import QUESTION, file_cases, generated_cases, run_topic


def first_topic(prompt):
    return prompt.split("USER: I would like to discuss the topic of ")[1].split(".")[0]


def test_generated_conversations_follow_longchat_and_are_seeded():
    cases = generated_cases([3, 5], samples=2, seed=1)
    assert cases == generated_cases([3, 5], samples=2, seed=1) != generated_cases([3, 5], samples=2, seed=2)
    for case in cases:
        prompt = case["prompt"]
        assert prompt.startswith(f"Below is a record of our previous conversation on {case['num_topics']} "
                                 f"different topics.")
        assert prompt.endswith(QUESTION)
        assert prompt.count("USER: I would like to discuss the topic of") == case["num_topics"]
        assert first_topic(prompt) == case["target"]


def test_accuracy_per_group_with_a_substring_match_and_resume(tmp_path):
    # right (in other words around it, other case) for 3 topics, wrong (the second topic) for 5
    def answer(prompt):
        topics = [t.split(".")[0] for t in prompt.split("USER: I would like to discuss the topic of ")[1:]]
        return f"We first discussed {topics[0].upper()}!" if len(topics) == 3 else topics[1]

    fake = FakeBackend(answer, batch_size=4)
    summary = run_topic(fake, tmp_path, num_topics=[3, 5], samples=2)
    assert summary["by_num_topics"] == {"3": 1.0, "5": 0.0} and summary["score"] == 0.5
    records = json.loads((tmp_path / "topic.json").read_text())
    assert [r["num_topics"] for r in records] == [3, 3, 5, 5]
    assert all({"target", "prediction", "score"} <= set(r) for r in records)
    assert matplotlib.image.imread(tmp_path / "topic.png").shape[1] > 500
    again = FakeBackend(answer, batch_size=4)
    run_topic(again, tmp_path, num_topics=[3, 5], samples=2)
    assert again.prompts == []


def test_reads_longchat_testcases_and_paper_records(tmp_path):
    cases_dir = tmp_path / "testcases"
    cases_dir.mkdir()
    for n in (10, 5):
        rows = [{"test_id": i, "prompt": f"record {n} {i}", "topics": [f"topic {i}", "other"], "prompt_length": -1}
                for i in range(2)]
        (cases_dir / f"{n}_topics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cases = file_cases(cases_dir, None)
    assert [c["id"] for c in cases] == ["5_topics-0", "5_topics-1", "10_topics-0", "10_topics-1"]
    assert cases[0]["target"] == "topic 0" and cases[0]["prompt"] == "record 5 0"
    paper = tmp_path / "topic_retrieval.json"
    paper.write_text(json.dumps({"context": "C", "question": "Q?", "topics": ["a", "b"], "num_topics": 5}) + "\n")
    assert file_cases(paper, [5])[0]["prompt"] == "C Q?" and file_cases(paper, [10]) == []
    paper.write_text(json.dumps({"context": "C"}) + "\n")
    with pytest.raises(RecordError, match="record 1"):
        file_cases(paper, None)


def test_topic_cli_runs_a_tiny_model_end_to_end(tiny_model_dir, tmp_path):
    main(["eval", "topic", "--model", str(tiny_model_dir), "--output-dir", str(tmp_path), "--num-topics", "1,2",
          "--samples", "2", "--max-length", "2000"])
    records = json.loads((tmp_path / "topic.json").read_text())
    assert len(records) == 4 and all(r["score"] == float(r["target"] in r["prediction"].lower()) for r in records)
    summary = json.loads((tmp_path / "topic.summary.json").read_text())
    assert set(summary["by_num_topics"]) == {"1", "2"}
