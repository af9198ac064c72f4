import json
from collections import Counter

import pytest

from tenfold.cli import main
from tenfold.io import AppendLog
from tenfold.models import load_tokenizer
from tenfold.records import encode_record
from tenfold.synth.prompts import TASKS
from tenfold.synth.replies import parse_json_list, valid_items
from tenfold.toy import toy_records

TOPICS = {
    "bread": "Bakers knead the dough before bread rises in a warm oven. Sourdough bread needs a starter culture.",
    "ships": "Sailors steer ships through the harbour at dawn. Cargo ships carry containers across the ocean.",
    "bees": "Bees collect nectar from flowers in spring. A hive of bees keeps one queen and many workers.",
}


def write_corpus(root, n_toy=6, with_story=True, with_short=True):
    """Toy-world documents (facts like 'the number of anna is 42 .'), a story with named characters,
    and short texts on three topics for the heterogeneous task."""
    root.mkdir(parents=True, exist_ok=True)
    chats = [r for r in toy_records(2 * n_toy, seed=5, min_lines=60, max_lines=80) if "conversations" in r]
    for i, record in enumerate(chats):
        (root / f"toy{i}.txt").write_text(record["conversations"][0]["content"].rsplit("\n\n", 1)[0])
    if with_story:
        story = " ".join(f"On day {d} Anna walked to the market with {d % 5 + 2} coins. Boris sold her bread there. "
                         f"Later Anna met Clara at the river. Clara was a fisher who told stories." for d in range(12))
        (root / "story.md").write_text(story)
    if with_short:
        with open(root / "short.jsonl", "w") as f:
            for i in range(9):
                topic = list(TOPICS)[i % 3]
                f.write(json.dumps({"text": f"Note {i} on {topic}. {TOPICS[topic]} " * 3}) + "\n")
    return root


def records_of(path):
    return [json.loads(line) for line in open(path)]


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    corpus = write_corpus(root / "corpus", with_story=False)
    books = write_corpus(root / "books", n_toy=1, with_short=False)
    output = root / "out" / "synth.jsonl"
    common = ["--output", str(output), "--min-tokens", "400", "--max-tokens", "3000", "--chunk-tokens", "300",
              "--tokenizer", "tenfold/tiny-llama"]
    main(["synth", "--corpus", str(books), "--tasks", "biography"] + common)  # a second run appends below
    tasks = "single_detail,multi_detail,multi_detail_heterogeneous"
    argv = ["synth", "--corpus", str(corpus), "--tasks", tasks] + common
    main(argv)
    return argv, corpus, output


def test_offline_synth_writes_valid_records_for_all_four_tasks(offline_run):
    _, corpus, output = offline_run
    records = records_of(output)
    assert {r["task"] for r in records} == set(TASKS)
    assert len({r["id"] for r in records}) == len(records)
    tokenizer = load_tokenizer("tenfold/tiny-llama")
    for record in records:
        assert record["source"] in ("corpus", "books") and record["meta"]["generator"] == "offline/extractive-1"
        turns = record["conversations"]
        assert [t["role"] for t in turns] == ["user", "assistant"] * (len(turns) // 2)
        assert len(turns) >= 2 and all(t["content"].strip() for t in turns)
        context, question = turns[0]["content"].rsplit("\n\n", 1)
        assert question and "\n\n" not in question
        assert encode_record(record, tokenizer, max_length=100_000) is not None  # what `tenfold train` reads
    by_task = {t: [r for r in records if r["task"] == t] for t in TASKS}
    # single detail on toy documents: "what is the number of anna ?" -> "42", verbatim from the document
    toy = [r for r in by_task["single_detail"] if "the number of" in r["conversations"][0]["content"]]
    assert toy
    for record in toy:
        document = record["conversations"][0]["content"].rsplit("\n\n", 1)[0]
        questions = [q["content"].rsplit("\n\n", 1)[-1] for q in record["conversations"][::2]]
        assert sum(q.startswith("what is the number of ") for q in questions) >= 1, questions
        for q, a in zip(record["conversations"][::2], record["conversations"][1::2]):
            question = q["content"].rsplit("\n\n", 1)[-1]
            if question.startswith("what is the number of"):
                name = question.split()[-2]
                assert f"the number of {name} is {a['content']} ." in document
            assert a["content"] in document
    biography = by_task["biography"][0]["conversations"]
    assert {"Anna", "Clara"} <= {t["content"].split("biography of ")[1].split(",")[0] for t in biography[::2]}
    hetero = by_task["multi_detail_heterogeneous"][0]
    assert hetero["conversations"][0]["content"].startswith("Text 1:\n") and hetero["meta"]["texts"] >= 2
    assert hetero["source"] == "corpus"


def test_summary_counts_skips_and_rejections_and_draws_the_histogram(offline_run):
    _, _, output = offline_run
    summary = json.loads(output.with_name("synth.jsonl.summary.json").read_text())
    assert sum(summary["records_in_output"].values()) == len(records_of(output))
    assert summary["documents_skipped"]["too_short"] == 9  # the short texts, reused by the heterogeneous task
    assert summary["requests"]["requests"] > 0 and summary["requests"]["failed"] == 0
    assert summary["records_written"]["multi_detail_heterogeneous"] >= 1
    assert summary["records_in_output"]["biography"] == 1  # from the first run
    lengths = summary["record_tokens"]
    assert 400 < lengths["min"] <= lengths["max"] < 3600
    assert output.with_name("synth.jsonl.lengths.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rerun_adds_nothing_and_redoing_costs_no_request(offline_run, capsys):
    argv, _, output = offline_run
    before = output.read_text()
    main(argv)
    assert output.read_text() == before
    summary = json.loads(output.with_name("synth.jsonl.summary.json").read_text())
    assert summary["records_written"] == {}
    assert summary["contexts_already_done"] == len(records_of(output)) - 1  # the biography came from another corpus
    assert "0 new records" in capsys.readouterr().out
    output.write_text(before.split("\n", 1)[0] + "\n")  # keep only the biography: the rest is redone from the cache
    main(argv)
    summary = json.loads(output.with_name("synth.jsonl.summary.json").read_text())
    assert summary["requests"]["requests"] == 0 and summary["requests"]["cached_replies"] > 0
    assert sorted(output.read_text().splitlines()) == sorted(before.splitlines())


def test_rerun_after_a_cut_last_line_redoes_that_record_once(tmp_path):
    output = tmp_path / "synth.jsonl"
    corpus = write_corpus(tmp_path / "corpus", n_toy=4, with_story=False, with_short=False)
    argv = ["synth", "--corpus", str(corpus), "--output", str(output), "--min-tokens", "400", "--max-tokens", "3000",
            "--tasks", "single_detail,multi_detail", "--tokenizer", "tenfold/tiny-llama"]
    main(argv)
    full = records_of(output)
    data = output.read_bytes()
    output.write_bytes(data[:len(data) - len(data.splitlines(True)[-1]) // 2])  # a kill mid-write
    assert len(AppendLog(output).finished(keep_records=False)) == len(full) - 1 and output.read_bytes().endswith(b"\n")
    main(argv)
    again = records_of(output)
    assert sorted(json.dumps(r, sort_keys=True) for r in again) == sorted(json.dumps(r, sort_keys=True) for r in full)


def test_reply_validation_repairs_what_is_safe_and_counts_every_rejection():
    keys = ("question", "answer")
    assert parse_json_list('```json\n[{"question": "q", "answer": "a"},]\n```') == [{"question": "q", "answer": "a"}]
    assert (parse_json_list("Sure! [{'question': 'q', 'answer': 'a'}] Hope it helps.")
            == [{"question": "q", "answer": "a"}])
    assert parse_json_list('{"questions": [{"question": "q", "answer": "a"}]}') == [{"question": "q", "answer": "a"}]
    assert parse_json_list("__import__('os').system('true')") is None  # never evaluated
    rejected = Counter()
    chunk = "The lighthouse keeper, Marta, lit the lamp at nine every evening."
    reply = json.dumps([{"question": "Who lit the lamp?", "answer": "Marta, the lighthouse keeper"},
                        {"question": "When?", "answer": "at nine every evening"},
                        {"question": "What colour was the boat?", "answer": "a bright yellow dinghy"},
                        {"question": "", "answer": "x"}, {"question": "Q?"}])
    kept = valid_items(reply, keys, rejected, support=chunk)
    assert [k["answer"] for k in kept] == ["Marta, the lighthouse keeper", "at nine every evening"]
    assert valid_items("I cannot help with that.", keys, rejected) == []
    assert valid_items('["just", "strings"]', keys, rejected) == []
    assert valid_items("[]", keys, rejected) == []
    assert rejected == Counter(unsupported_answer=1, empty_field=2, malformed_json=1, wrong_shape=1, no_items=1)
    # support is checked only when asked
    assert valid_items(reply, keys, Counter())[2]["answer"] == "a bright yellow dinghy"


def test_transformers_generator_runs_and_counts_garbage_replies(tmp_path, tiny_model_dir):
    corpus = write_corpus(tmp_path / "corpus", n_toy=2, with_story=False, with_short=False)
    output = tmp_path / "synth.jsonl"
    recipe = tmp_path / "synth.yaml"
    recipe.write_text(f"synth:\n  generator: transformers\n  model: {tiny_model_dir}\n  max_new_tokens: 8\n"
                      f"  single_detail_chunks: 1\n  tasks: [single_detail]\n")
    with pytest.raises(SystemExit) as exit:  # no record: the work asked for is not done
        main(["synth", "--recipe", str(recipe), "--corpus", str(corpus), "--output", str(output),
              "--min-tokens", "400", "--max-tokens", "3000", "--tokenizer", "tenfold/tiny-llama"])
    assert exit.value.code == 1
    summary = json.loads((tmp_path / "synth.jsonl.summary.json").read_text())
    assert summary["generator"] == {"backend": "transformers", "model": str(tiny_model_dir)}
    assert summary["requests"]["requests"] == 2 and summary["requests"]["completion_tokens"] > 0
    # a random tiny model writes no JSON: every reply is unusable, counted, and left for a rerun
    assert summary["requests"]["failed_by"] == {"malformed_json": 2} and summary["rejected"] == {"request_failed": 2}
    assert output.read_text() == ""


def test_bad_settings_are_refused_with_the_allowed_values(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["synth", "--corpus", str(tmp_path), "--output", str(tmp_path / "o.jsonl"),
              "--tasks", "single_detail,poems"])
    assert "unknown task(s) poems" in capsys.readouterr().err
    recipe = tmp_path / "r.yaml"
    recipe.write_text("synth:\n  temprature: 0.5\n")
    with pytest.raises(SystemExit):
        main(["synth", "--recipe", str(recipe), "--corpus", str(tmp_path), "--output", str(tmp_path / "o.jsonl")])
    assert "unknown synth key 'temprature'" in capsys.readouterr().err
