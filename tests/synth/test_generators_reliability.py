"""synth under a faulty API: unusable 200 replies are retried, never cached, never lost; exit codes say
whether the work asked for was done (issue 14, parts 1 and 2)."""

import json
import socket
from types import SimpleNamespace

import pytest
from test_generators_openai import KEY_ENV, synth_argv
from test_synth import records_of, write_corpus

from fake_openai import FakeServer
from tenfold.cli import main
from tenfold.synth.replies import reply_problem

CYCLE = ("429", "500", "slow", "garbage", None, "wrong_shape", "bad_body", None)


def run(tmp_path, corpus, output, server, tasks="single_detail,multi_detail", **settings):
    recipe = tmp_path / f"{output.name}.yaml"
    values = {"api_key_env": KEY_ENV, "request_timeout": 1.0, "backoff_base": 0.01, "max_retries": 4} | settings
    recipe.write_text(json.dumps({"synth": values}))  # JSON is YAML
    main(synth_argv(corpus, output, server, "--tasks", tasks, "--chunk-tokens", "300", "--recipe", str(recipe)))


def by_id(output):
    records = records_of(output)
    assert len({r["id"] for r in records}) == len(records), "a record was written twice"
    return {r["id"]: r for r in records}


def cached_texts(output):
    return [json.loads(path.read_text())["text"] for path in output.parent.glob(f"{output.name}.cache/*/*.json")]


def last_error_line(capsys):
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_first_run_under_unusable_200_replies_writes_the_records_of_a_fault_free_run(tmp_path, planted_key):
    corpus = write_corpus(tmp_path / "corpus", n_toy=6, with_story=False, with_short=False)
    clean, faulty = FakeServer(), FakeServer(faults={n: CYCLE[n % len(CYCLE)] for n in range(200)})
    try:
        run(tmp_path, corpus, tmp_path / "clean.jsonl", clean)
        run(tmp_path, corpus, tmp_path / "faulty.jsonl", faulty)
    finally:
        clean.close(), faulty.close()
    expected = by_id(tmp_path / "clean.jsonl")
    assert len(expected) == 6 and len(faulty.order) > 6  # single_detail asks once per chunk
    assert by_id(tmp_path / "faulty.jsonl") == expected
    unusable = [key for key, n in faulty.order.items() if CYCLE[n % len(CYCLE)] in ("garbage", "wrong_shape")]
    assert unusable and all(len(faulty.attempts[key]) == 2 for key in unusable)  # asked again, once
    summary = json.loads((tmp_path / "faulty.jsonl.summary.json").read_text())
    assert summary["rejected"] == {} and summary["requests"]["failed"] == 0
    assert {"malformed_json", "wrong_shape"} <= set(summary["requests"]["errors"])
    assert all(reply_problem(text) is None for text in cached_texts(tmp_path / "faulty.jsonl"))


def test_an_unusable_reply_cached_by_an_older_version_is_asked_again_not_replayed(tmp_path, planted_key):
    corpus = write_corpus(tmp_path / "corpus", n_toy=3, with_story=False, with_short=False)
    output, server = tmp_path / "synth.jsonl", FakeServer()
    try:
        run(tmp_path, corpus, output, server)
        expected = by_id(output)
        for path in output.parent.glob("synth.jsonl.cache/*/*.json"):  # what older versions cached
            path.write_text(json.dumps(json.loads(path.read_text()) | {"text": "I'd rather not."}))
        output.unlink()
        run(tmp_path, corpus, output, server)
    finally:
        server.close()
    assert by_id(output) == expected and set(server.answered.values()) == {2}


def test_a_reply_that_stays_unusable_spends_the_budget_exits_1_and_the_same_command_resumes(
        tmp_path, planted_key, capsys):
    corpus = write_corpus(tmp_path / "corpus", n_toy=3, with_story=False, with_short=False)
    clean, server = FakeServer(), FakeServer(garbage={0})
    output = tmp_path / "synth.jsonl"
    try:
        run(tmp_path, corpus, tmp_path / "clean.jsonl", clean, tasks="single_detail")
        with pytest.raises(SystemExit) as exit:
            run(tmp_path, corpus, output, server, tasks="single_detail", backoff_base=0.2, max_retries=2)
        assert exit.value.code == 1
        line = last_error_line(capsys)
        assert "1 request(s) failed for good (malformed_json 1)" in line
        assert "running the same command again resumes" in line
        attempts = next(server.attempts[key] for key, n in server.order.items() if n == 0)
        assert len(attempts) == 3 and attempts[1] - attempts[0] >= 0.1 and attempts[2] - attempts[1] >= 0.2
        summary = json.loads((tmp_path / "synth.jsonl.summary.json").read_text())
        assert summary["requests"]["failed_by"] == {"malformed_json": 1}
        assert summary["requests"]["errors"] == {"malformed_json": 3}
        assert len(by_id(output)) == 2  # the context with the failed request has no (partial) record
        assert all(reply_problem(text) is None for text in cached_texts(output))
        server.garbage = set()
        run(tmp_path, corpus, output, server, tasks="single_detail", backoff_base=0.2, max_retries=2)
        run(tmp_path, corpus, output, server, tasks="single_detail")  # done already: exits 0 with no new record
    finally:
        clean.close(), server.close()
    assert len(clean.order) > 3  # several requests per context
    assert by_id(output) == by_id(tmp_path / "clean.jsonl")


def test_nothing_listening_at_the_base_url_exits_1_and_counts_the_failures(tmp_path, planted_key, capsys):
    corpus = write_corpus(tmp_path / "corpus", n_toy=2, with_story=False, with_short=False)
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        nowhere = SimpleNamespace(url=f"http://127.0.0.1:{sock.getsockname()[1]}/v1")
    with pytest.raises(SystemExit) as exit:
        run(tmp_path, corpus, tmp_path / "synth.jsonl", nowhere, tasks="multi_detail", max_retries=1)
    assert exit.value.code == 1
    line = last_error_line(capsys)
    assert "2 request(s) failed for good (connection 2)" in line and "same command again resumes" in line


def test_an_empty_corpus_exits_1_saying_no_record_was_written(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exit:
        main(["synth", "--corpus", str(tmp_path / "empty"), "--output", str(tmp_path / "synth.jsonl"),
              "--tokenizer", "tenfold/tiny-llama"])
    assert exit.value.code == 1
    assert "no record written" in last_error_line(capsys)
