"""`tenfold synth` against a real OpenAI-compatible server: `transformers serve` with the shipped tiny
model, on loopback. The tiny model's replies are garbage: each is asked again (the retry budget of the
recipe), counted, never cached, and the run ends saying the same command resumes, with exit code 1."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from test_synth import write_corpus

from tenfold.cli import main

TINY = str(Path(__file__).resolve().parents[2] / "src" / "tenfold" / "assets" / "tiny-llama")
SERVE = shutil.which("transformers", path=str(Path(sys.executable).parent))


@pytest.fixture(scope="module")
def served_tiny_model(tmp_path_factory):
    pytest.importorskip("fastapi", reason="needs transformers[serving] (the dev extra installs it)")
    # transformers serve (5.25 on) refuses prompts past max_position_embeddings, the tiny model's 256, and the
    # synth prompts are 1-2K tokens: serve a copy whose config says 8K (RoPE runs there; the replies are garbage
    # either way).
    model = shutil.copytree(TINY, tmp_path_factory.mktemp("served") / "tiny-llama")
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps(dict(config, max_position_embeddings=8192)))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([SERVE, "serve", str(model), "--port", str(port), "--host", "127.0.0.1"],
                              env=dict(os.environ, HF_HUB_OFFLINE="1"), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while True:  # ready when its health endpoint answers
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            break
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, "transformers serve did not start"
            time.sleep(0.2)
    yield f"http://127.0.0.1:{port}/v1", str(model)
    server.terminate()
    server.wait(timeout=30)


def test_synth_against_transformers_serve_retries_and_counts_the_garbage(served_tiny_model, tmp_path,
                                                                         monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "EMPTY")
    base_url, model = served_tiny_model
    corpus = write_corpus(tmp_path / "corpus", n_toy=3, with_story=False, with_short=False)
    recipe = tmp_path / "synth.yaml"
    recipe.write_text("synth:\n  max_new_tokens: 32\n  max_retries: 1\n  backoff_base: 0.01\n")
    output = tmp_path / "synth.jsonl"
    with pytest.raises(SystemExit) as exit:  # no usable reply, no record: the work asked for is not done
        main(["synth", "--corpus", str(corpus), "--output", str(output), "--generator", "openai", "--model", model,
              "--base-url", base_url, "--min-tokens", "400", "--max-tokens", "3000",
              "--tasks", "single_detail,multi_detail", "--recipe", str(recipe),
              "--tokenizer", "tenfold/tiny-llama"])
    assert exit.value.code == 1
    summary = json.loads((tmp_path / "synth.jsonl.summary.json").read_text())
    requests = summary["requests"]
    assert requests["completion_tokens"] > 0  # answered by the served model itself
    failed = requests["failed_by"]  # each garbage reply was asked again once, then counted as failed
    assert sum(failed.values()) >= 3 and set(failed) <= {"malformed_json", "wrong_shape"}
    assert summary["rejected"] == {"request_failed": sum(failed.values())}
    assert output.read_text() == ""
