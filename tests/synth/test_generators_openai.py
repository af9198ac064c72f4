"""synth's openai backend against the fake OpenAI-compatible server on loopback (tests/fake_openai.py).

The server answers chat completions with a JSON list built from the prompt (an answer taken from the
excerpt, so single-detail support holds), and misbehaves on purpose: 429 with Retry-After, 500,
replies slower than the client's time-out, bodies that are not JSON, and contents that are not JSON.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from test_synth import write_corpus

from fake_openai import FakeServer
from tenfold.cli import main

KEY = "sk-planted-0123456789abcdefXYZ"
KEY_ENV = "TENFOLD_TEST_PLANTED_KEY"  # conftest's planted_key puts KEY there


def synth_argv(corpus, output, server, *extra):
    return ["synth", "--corpus", str(corpus), "--output", str(output), "--generator", "openai", "--model", "fake-gpt",
            "--base-url", server.url, "--min-tokens", "400", "--max-tokens", "3000", "--concurrency", "4",
            "--tokenizer", "tenfold/tiny-llama", *extra]


def test_faults_cost_no_record_and_duplicate_none_and_the_key_never_leaks(tmp_path, planted_key, capfd):
    corpus = write_corpus(tmp_path / "corpus", n_toy=8, with_story=False, with_short=False)
    faults = {0: "429", 1: "500", 2: "slow", 3: "bad_body", 4: "garbage", 5: "429", 6: "500", 7: "wrong_shape"}
    server = FakeServer(faults=faults)
    recipe = tmp_path / "synth.yaml"
    recipe.write_text(f"synth:\n  api_key_env: {KEY_ENV}\n  request_timeout: 1.0\n  backoff_base: 0.01\n"
                      f"  max_retries: 4\n  price_input_per_million: 10\n  price_output_per_million: 30\n")
    output = tmp_path / "synth.jsonl"
    try:
        main(synth_argv(corpus, output, server, "--tasks", "multi_detail", "--recipe", str(recipe)))
    finally:
        server.close()
    records = [json.loads(line) for line in open(output)]
    assert len(server.order) == 8 and server.authorizations == {f"Bearer {KEY}"}  # one prompt a document; the key
    assert len(records) == 8 and len({r["id"] for r in records}) == 8  # unusable 200s are asked again
    summary = json.loads((tmp_path / "synth.jsonl.summary.json").read_text())
    assert summary["rejected"] == {}
    tally = summary["requests"]
    assert tally["failed"] == 0 and tally["retries"] == len(faults) and tally["requests"] == 8 + len(faults)
    assert tally["errors"] == {"http_429": 2, "http_500": 2, "timeout": 1, "bad_response": 1, "malformed_json": 1,
                               "wrong_shape": 1}
    # the two unusable 200s are paid for too
    assert tally["prompt_tokens"] == 1000 and tally["cost"] == pytest.approx((1000 * 10 + 100 * 30) / 1e6)
    first_429 = next(k for k, n in server.order.items() if n == 0)
    assert server.attempts[first_429][1] - server.attempts[first_429][0] >= 0.3  # Retry-After honoured
    logs = capfd.readouterr()
    for path in [*tmp_path.rglob("*")]:
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    assert KEY not in logs.out + logs.err


def test_a_request_that_keeps_failing_is_counted_and_retried_on_the_next_run(tmp_path, planted_key):
    corpus = write_corpus(tmp_path / "corpus", n_toy=2, with_story=False, with_short=False)
    server = FakeServer(faults={0: "500"})
    output = tmp_path / "synth.jsonl"
    argv = synth_argv(corpus, output, server, "--tasks", "multi_detail")
    recipe = tmp_path / "synth.yaml"
    recipe.write_text(f"synth:\n  api_key_env: {KEY_ENV}\n  backoff_base: 0.01\n  max_retries: 0\n")
    try:
        with pytest.raises(SystemExit, match="1"):  # a request failed for good: the work is not done
            main(argv + ["--recipe", str(recipe)])
        summary = json.loads((tmp_path / "synth.jsonl.summary.json").read_text())
        assert summary["rejected"] == {"request_failed": 1} and summary["requests"]["failed"] == 1
        assert len(output.read_text().splitlines()) == 1
        main(argv + ["--recipe", str(recipe)])  # the failure was not cached: asked again, and answered
    finally:
        server.close()
    assert len({json.loads(line)["id"] for line in open(output)}) == len(output.read_text().splitlines()) == 2


def test_kill_9_mid_run_then_restart_leaves_every_record_exactly_once(tmp_path, planted_key):
    corpus = write_corpus(tmp_path / "corpus", n_toy=10, with_story=False, with_short=False)
    server = FakeServer(gate_after=5)  # the run cannot finish until the test opens the gate
    output = tmp_path / "synth.jsonl"
    recipe = tmp_path / "synth.yaml"
    recipe.write_text(f"synth:\n  api_key_env: {KEY_ENV}\n")
    argv = synth_argv(corpus, output, server, "--tasks", "single_detail,multi_detail", "--recipe", str(recipe))
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    process = subprocess.Popen([sys.executable, "-m", "tenfold.cli", *argv], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (output.exists() and output.read_text().count("\n") >= 1):  # progress we can see
            assert process.poll() is None and time.monotonic() < deadline, "synth ended or stalled before the kill"
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        written_before = output.read_text().count("\n")
        answered_before = sum(server.answered.values())
        cached_before = len(list(tmp_path.glob("synth.jsonl.cache/*/*.json")))
        assert 1 <= written_before < 10 and 1 <= answered_before <= 5
        server.gate_after = None
        server.gate.set()
        main(argv)
    finally:
        server.close()
    records = [json.loads(line) for line in open(output)]
    assert len(records) == 10 and len({r["id"] for r in records}) == 10
    assert {r["task"] for r in records} == {"single_detail", "multi_detail"}
    # the replies cached before the kill were not asked for again; only those the kill caught in
    # flight (answered by the server, never stored by the client) were
    assert cached_before >= 1
    assert sum(server.answered.values()) - len(server.order) <= answered_before - cached_before
