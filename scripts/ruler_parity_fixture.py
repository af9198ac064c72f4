"""Regenerate tests/fixtures/ruler_parity.json: RULER's own prepare.py and evaluate.py on tiny inputs.

    python scripts/ruler_parity_fixture.py /path/to/NVIDIA-RULER [--python /path/to/python]

The first argument is a checkout of https://github.com/NVIDIA/RULER (tenfold pins ruler.RULER_COMMIT). The
python given (default: this one) runs RULER's scripts and needs what they import: numpy, scipy, nltk,
wonderwords, transformers, tenacity, pyyaml, tqdm and pandas. Nothing else of RULER's setup is needed:

- the tokenizer is a tiny byte-level BPE (tenfold.toy.build_tokenizer: Llama-3's special tokens and chat
  template, so RULER's meta-llama3 template is its chat template) trained on the toy texts, the essay and RULER's
  templates (fixture_tokenizer: compact enough for vt's 500-token example), given to RULER as `--tokenizer_type hf`;
- the essay, SQuAD and HotpotQA files are small ones made here (essay_text, squad_data, hotpotqa_data), written
  where RULER reads them (scripts/data/synthetic/json/) in a temporary copy of the checkout;
- nltk's punkt_tab is a stand-in with a few abbreviations (write_punkt), on NLTK_DATA for RULER and for the
  test: both split sentences with nltk's code; the parity is about RULER's code, not punkt's English data;
- evaluate.py reads its files with NeMo's manifest helpers; a stand-in module (JSON lines) takes their place;
  english_words.json (git LFS; cwe uses it only far past these lengths) is a stand-in too.

For each of SETTINGS (RULER's model template, length) it runs prepare.py for every task of synthetic.yaml as
RULER's run.sh does, keeps each sample's input + answer prefix (as a sha256, its head and tail), outputs and
length, writes the predictions `prediction()` makes as RULER's <task>.jsonl and runs evaluate.py on them: all
samples of a task at once, and each sample alone. The fixture holds RULER's configuration as tenfold reads it
(ruler.load_config of the checkout), those hashes and the scores; nothing of RULER's code.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "ruler_parity.json"
SETTINGS = [("base", 2048), ("meta-llama3", 4096)]  # RULER's model template, max_seq_length
SAMPLES = 2
VARIANTS = 4  # predictions per sample (see prediction())
PUNKT_ABBREVIATIONS = ["mr", "dr", "e.g", "i.e", "u.s", "etc"]

WORDS = ["the", "startup", "founders", "said", "money", "work", "users", "idea", "program", "city", "investors",
         "hard", "good", "new", "think", "people", "make", "because", "most", "time", "year", "Lisp", "Paris",
         "Viaweb", "1998", "3.5", "it's", "(mostly)", "well-known", "e.g.", "Mr.", "U.S.", "etc.", "\"great\""]
NAMES = ["Ada", "Brook", "Cyril", "Dana", "Ezra", "Farah", "Gus", "Hana"]
PLACES = ["Oslo", "Lima", "Kyoto", "Accra", "Perth", "Quito"]


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(4, 14))]
    return " ".join([words[0].capitalize()] + words[1:]) + rng.choice([".", ".", ".", "?", "!"])


def essay_text() -> str:
    """About 2,500 words of essay-like prose (abbreviations, numbers, quotes, paragraphs)."""
    rng = random.Random(1998)
    paragraphs = [" ".join(_sentence(rng) for _ in range(rng.randint(2, 7))) for _ in range(70)]
    return "\n\n".join(paragraphs) + "\n"


def squad_data() -> dict:
    """dev-v2.0.json's layout: 6 articles of 4 paragraphs, answerable and impossible questions, one paragraph
    repeated in two articles."""
    rng = random.Random(2018)
    articles = []
    for a in range(6):
        paragraphs = []
        for p in range(4):
            name, place = NAMES[(a + p) % len(NAMES)], PLACES[(a * 4 + p) % len(PLACES)]
            context = f"{_sentence(rng)} {name} moved to {place} in {1900 + 7 * a + p}. {_sentence(rng)}"
            if a == 5 and p == 3:
                context = articles[0]["paragraphs"][0]["context"]
            qas = [{"id": f"{a}-{p}-0", "question": f"Where did {name} move in article {a}?", "is_impossible": False,
                    "answers": [{"text": place, "answer_start": 0}, {"text": place, "answer_start": 0},
                                {"text": f"to {place}", "answer_start": 0}]},
                   {"id": f"{a}-{p}-1", "question": f"When did {name} reach the moon?", "is_impossible": True,
                    "answers": [], "plausible_answers": [{"text": "1969", "answer_start": 0}]}]
            paragraphs.append({"context": context, "qas": qas})
        articles.append({"title": f"Article_{a}", "paragraphs": paragraphs})
    return {"version": "v2.0", "data": articles}


def hotpotqa_data() -> list[dict]:
    """hotpot_dev_distractor_v1.json's layout: 8 questions of 4 titled documents, some shared."""
    rng = random.Random(2019)
    items = []
    for q in range(8):
        titles = [f"Title {(q + k) % 11}" for k in range(4)]
        context = [[t, [f"{t} is about {rng.choice(PLACES)}. ", _sentence(rng) + " ", _sentence(rng)]] for t in titles]
        items.append({"_id": f"h{q}", "question": f"Which place links {titles[0]} and {titles[1]}?",
                      "answer": rng.choice(PLACES), "type": "bridge", "level": "hard",
                      "supporting_facts": [[titles[0], 0], [titles[1], 0]], "context": context})
    return items


def write_punkt(nltk_data: Path) -> Path:
    """A stand-in punkt_tab/english (a few abbreviations, nothing else), and the punkt folder prepare.py looks for."""
    english = nltk_data / "tokenizers" / "punkt_tab" / "english"
    english.mkdir(parents=True, exist_ok=True)
    (nltk_data / "tokenizers" / "punkt").mkdir(exist_ok=True)
    (english / "abbrev_types.txt").write_text("\n".join(PUNKT_ABBREVIATIONS) + "\n")
    for name in ("collocations.tab", "sent_starters.txt", "ortho_context.tab"):
        (english / name).write_text("")
    return nltk_data


def fixture_tokenizer(config: dict):
    from tenfold.toy import build_tokenizer, toy_texts

    ruler_texts = [t[key] for t in config["templates"].values() for key in ("template", "answer_prefix")]
    return build_tokenizer(toy_texts() + [essay_text()] + (ruler_texts + list(config["strings"].values())) * 20,
                           vocab_size=1024)


def inputs_hash() -> str:
    text = json.dumps([essay_text(), squad_data(), hotpotqa_data(), PUNKT_ABBREVIATIONS], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def tokenizer_hash(tokenizer) -> str:
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()


def prediction(outputs: list[str], variant: int) -> str:
    """A model's answer to a sample: all answers, the first in other case after a control character, none,
    every other answer with control characters around."""
    if variant == 0:
        return " " + ", ".join(outputs) + "."
    if variant == 1:
        return "\x07" + outputs[0].upper() + "\x01 and so on"
    if variant == 2:
        return "\n\n  I do not know.\t"
    return "\x1f " + " and ".join(o.lower() for o in outputs[::2]) + " \x02"


def sample_record(input_text: str, answer_prefix: str, outputs: list[str], length: int) -> dict:
    full = input_text + answer_prefix
    return {"sha256": hashlib.sha256(full.encode()).hexdigest(), "head": full[:160], "tail": full[-160:],
            "outputs": outputs, "length": length}


def _nemo_stand_in(folder: Path) -> None:
    module = folder / "nemo" / "collections" / "asr" / "parts" / "utils"
    module.mkdir(parents=True)
    (module / "manifest_utils.py").write_text(
        "import json\n\n\ndef read_manifest(path):\n    with open(path) as f:\n"
        "        return [json.loads(line) for line in f if line.strip()]\n\n\n"
        "def write_manifest(path, items):\n    with open(path, 'w') as f:\n"
        "        for item in items:\n            f.write(json.dumps(item) + '\\n')\n")


def _scores(work: Path, python: str, env: dict, preds: Path) -> dict[str, float]:
    subprocess.run([python, str(work / "scripts" / "eval" / "evaluate.py"), "--data_dir", str(preds),
                    "--benchmark", "synthetic"], cwd=work / "scripts" / "eval", env=env, check=True,
                   capture_output=True)
    rows = {row[0]: row[1:] for row in csv.reader((preds / "summary.csv").open())}
    return {task: float(score) for task, score in zip(rows["Tasks"], rows["Score"])}


def _write_preds(folder: Path, samples: dict[str, list[dict]], variant: int, only: int | None = None) -> None:
    folder.mkdir(parents=True)
    for task, rows in samples.items():
        with open(folder / f"{task}.jsonl", "w") as f:
            for i, row in enumerate(rows):  # niah.py's "index" is where the answer is, not the sample's number
                if only is None or i == only:
                    f.write(json.dumps({"index": i, "pred": prediction(row["outputs"], variant),
                                        "input": row["input"], "outputs": row["outputs"], "others": {},
                                        "truncation": -1, "length": row["length"]}) + "\n")


def run_official(ruler: Path, python: str) -> dict:
    from tenfold.eval.ruler import load_config

    config = load_config(ruler)
    tasks = list(config["tasks"])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        work = tmp / "ruler"
        shutil.copytree(ruler / "scripts", work / "scripts")
        json_dir = work / "scripts" / "data" / "synthetic" / "json"
        (json_dir / "PaulGrahamEssays.json").write_text(json.dumps({"text": essay_text()}))
        (json_dir / "squad.json").write_text(json.dumps(squad_data()))
        (json_dir / "hotpotqa.json").write_text(json.dumps(hotpotqa_data()))
        # cwe reads this git-LFS file at start-up but draws from it only past wonderwords' 8,166 words (~75K tokens)
        (json_dir / "english_words.json").write_text(json.dumps({str(i): w for i, w in enumerate(WORDS)}))
        fixture_tokenizer(config).save_pretrained(tmp / "tokenizer")
        _nemo_stand_in(tmp / "stand-ins")
        (tmp / "bin").mkdir()  # prepare.py runs each generator as `python ...`: this one (a venv's needs its path)
        (tmp / "bin" / "python").write_text(f'#!/bin/sh\nexec "{python}" "$@"\n')
        (tmp / "bin" / "python").chmod(0o755)
        env = {**os.environ, "NLTK_DATA": str(write_punkt(tmp / "nltk_data")),
               "PATH": f"{tmp / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp / "stand-ins"), os.environ.get("PYTHONPATH")])),
               "TOKENIZERS_PARALLELISM": "false"}
        settings = []
        for template, length in SETTINGS:
            data = tmp / f"data-{template}-{length}"
            samples = {}
            for task in tasks:
                result = subprocess.run(
                    [python, str(work / "scripts" / "data" / "prepare.py"), "--save_dir", str(data), "--benchmark",
                     "synthetic", "--task", task, "--tokenizer_path", str(tmp / "tokenizer"), "--tokenizer_type", "hf",
                     "--max_seq_length", str(length), "--model_template_type", template, "--num_samples", str(SAMPLES)],
                    cwd=work / "scripts" / "data", env=env, capture_output=True, text=True,
                    timeout=1800)  # RULER retries forever a sample that cannot fit: a length too short for a task
                path = data / task / "validation.jsonl"
                if result.returncode or not path.is_file():
                    raise SystemExit(f"prepare.py {task} {template} {length} failed:\n{result.stdout}\n{result.stderr}")
                samples[task] = [json.loads(line) for line in path.read_text().splitlines()]
                print(f"{template} {length} {task}: {len(samples[task])} samples", file=sys.stderr)
            scores, sample_scores = {}, {}
            for variant in range(VARIANTS):
                _write_preds(data / f"pred-{variant}", samples, variant)
                scores[str(variant)] = _scores(work, python, env, data / f"pred-{variant}")
                per_sample = []
                for i in range(SAMPLES):
                    _write_preds(data / f"pred-{variant}-{i}", samples, variant, only=i)
                    per_sample.append(_scores(work, python, env, data / f"pred-{variant}-{i}"))
                sample_scores[str(variant)] = {t: [s[t] for s in per_sample] for t in tasks}
            settings.append({"template": template, "length": length,
                             "samples": {t: [sample_record(r["input"], r.get("answer_prefix", ""), r["outputs"],
                                                           r["length"]) for r in rows] for t, rows in samples.items()},
                             "scores": scores, "sample_scores": sample_scores})
    return {"config": {k: v for k, v in config.items() if k != "source"}, "settings": settings}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("ruler", type=Path, help="a checkout of NVIDIA/RULER")
    parser.add_argument("--python", default=sys.executable, help="interpreter with RULER's generator dependencies")
    parser.add_argument("--out", type=Path, default=FIXTURE)
    args = parser.parse_args()
    from tenfold.eval.ruler import load_config

    tokenizer_sha = tokenizer_hash(fixture_tokenizer(load_config(args.ruler)))
    commit = subprocess.run(["git", "-C", str(args.ruler), "rev-parse", "HEAD"], capture_output=True, text=True)
    versions = subprocess.run([args.python, "-c", "import importlib.metadata as m, sys; print(sys.version.split()[0], "
                               "*(f'{p} ' + m.version(p) for p in ('wonderwords', 'nltk', 'numpy', 'transformers')))"],
                              capture_output=True, text=True, check=True).stdout.strip()
    fixture = {"made_by": "scripts/ruler_parity_fixture.py", "ruler_commit": commit.stdout.strip() or None,
               "versions": versions, "tokenizer_sha256": tokenizer_sha, "inputs_sha256": inputs_hash(),
               "samples": SAMPLES, "variants": VARIANTS, **run_official(args.ruler.resolve(), args.python)}
    args.out.write_text(json.dumps(fixture, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
