import json

import pytest

from fakes import FakeBackend
from tenfold.cli import main
from tenfold.eval.metrics import first_integer
from tenfold.eval.passkey import FILLER, KEY_LINE, PREFIX, QUESTION, build_cases, run_passkey


@pytest.fixture(scope="module")
def tokenizer(tiny_backend):
    return tiny_backend.tokenizer


def test_first_integer_on_known_strings():
    assert first_integer("The pass key is 12345. Remember") == 12345
    assert first_integer("It is 007 or 8") == 7
    assert first_integer("none") is None


def test_cases_hold_one_seeded_key_each_within_the_length(tokenizer):
    cases = build_cases(tokenizer, [200, 400], [0, 50, 100], seed=5)
    assert cases == build_cases(tokenizer, [200, 400], [0, 50, 100], seed=5)
    assert len({c["key"] for c in cases}) == 6 and all(10**4 <= c["key"] < 10**5 for c in cases)
    assert [c["key"] for c in cases] != [c["key"] for c in build_cases(tokenizer, [200, 400], [0, 50, 100], seed=6)]
    for case in cases:
        line = KEY_LINE.format(key=case["key"])
        assert case["prompt"].count(line) == 1 and case["prompt"].endswith(QUESTION)
        assert FILLER.split(".")[0] in case["prompt"]
        assert (case["length"] - 6 <= len(tokenizer(case["prompt"], add_special_tokens=False)["input_ids"])
                <= case["length"] + 2)


def test_scores_exact_match_of_the_first_integer_and_resumes(tokenizer, tmp_path):
    def answer(prompt):  # right for depth 0, wrong elsewhere
        key = first_integer(prompt.split("The pass key is ")[1])
        return f"The pass key is {key}." if prompt.index("The pass key is") <= len(PREFIX) + 2 else "The pass key is 1."

    fake = FakeBackend(answer, tokenizer=tokenizer)
    summary = run_passkey(fake, tmp_path, lengths=[200, 300], depths=[0, 100])
    cells = json.loads((tmp_path / "passkey.json").read_text())
    assert [c["score"] for c in cells] == [1.0, 0.0, 1.0, 0.0]
    assert summary["score"] == 0.5 and (tmp_path / "passkey.png").stat().st_size > 10_000
    again = FakeBackend(lambda _: "no idea", tokenizer=tokenizer)
    run_passkey(again, tmp_path, lengths=[200, 300, 400], depths=[0, 100])
    assert len(again.prompts) == 2  # only the new length's cells
    assert len(json.loads((tmp_path / "passkey.json").read_text())) == 6


def test_passkey_cli_runs_a_tiny_model_end_to_end(tiny_model_dir, tmp_path):
    main(["eval", "passkey", "--model", str(tiny_model_dir), "--output-dir", str(tmp_path), "--lengths", "200,300",
          "--max-length", "512", "--depths", "0,100"])
    cells = json.loads((tmp_path / "passkey.json").read_text())
    assert len(cells) == 4 and all({"length", "depth", "key", "score", "prediction"} <= set(c) for c in cells)
    assert all(c["score"] == float(first_integer(c["prediction"]) == c["key"]) for c in cells)
    with pytest.raises(SystemExit):  # 1000 tokens do not fit the tiny model's 256
        main(["eval", "passkey", "--model", str(tiny_model_dir), "--output-dir", str(tmp_path / "x"),
              "--lengths", "1000"])
    assert not (tmp_path / "x").exists()
