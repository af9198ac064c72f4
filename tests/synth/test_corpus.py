import json
import re
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tenfold.errors import UserError
from tenfold.models import load_tokenizer
from tenfold.synth.corpus import chunk_text, filter_documents, read_corpus


@pytest.fixture(scope="module")
def count_tokens():
    tokenizer = load_tokenizer("tenfold/tiny-llama")
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_folder_with_bad_files_yields_the_good_ones_and_names_each_bad_one(tmp_path, capsys):
    corpus = tmp_path / "books"
    corpus.mkdir()
    (corpus / "a.txt").write_text("the fox is red .\nthe owl is grey .")
    (corpus / "b.md").write_text("# notes\n\nthe cat is black .")
    (corpus / "empty.txt").write_text("")
    (corpus / "blank.md").write_text("  \n\n ")
    (corpus / "binary.txt").write_bytes(b"GIF89a\x00\x01\x02text")
    (corpus / "latin1.txt").write_bytes("café au lait".encode("latin-1"))
    (corpus / "papers.jsonl").write_text(json.dumps({"text": "paper one"}) + "\n" + json.dumps({"body": "x"}) + "\n"
                                         + '{"text": "paper two is cut sh')  # a truncated last line
    pq.write_table(pa.table({"text": ["row one", "row two"], "n": [1, 2]}), corpus / "rows.parquet")
    skipped = Counter()
    documents = list(read_corpus(corpus, skipped))
    assert sorted(d.text for d in documents) == sorted(["the fox is red .\nthe owl is grey .",
                                                        "# notes\n\nthe cat is black .", "paper one", "row one",
                                                        "row two"])
    assert all(d.source == "books" for d in documents)
    assert skipped == Counter(empty_file=2, binary_file=1, not_utf8=1, no_text_field=1, bad_json_line=1)
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 6
    for name in ["empty.txt", "blank.md", "binary.txt", "latin1.txt", "papers.jsonl:2", "papers.jsonl:3"]:
        assert sum(name in line for line in errors) == 1, (name, errors)


def test_jsonl_text_field_and_saved_dataset(tmp_path):
    import datasets

    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"content": f"document {i}"}) for i in range(3)) + "\n")
    skipped = Counter()
    assert ([d.text for d in read_corpus(path, skipped, text_field="content")]
            == ["document 0", "document 1", "document 2"])
    assert [d.origin for d in read_corpus(path, skipped, text_field="content")][-1].endswith("docs.jsonl:3")
    datasets.Dataset.from_dict({"text": ["saved one", "saved two"]}).save_to_disk(str(tmp_path / "saved"))
    assert [d.text for d in read_corpus(tmp_path / "saved", skipped)] == ["saved one", "saved two"]
    with pytest.raises(UserError, match="not found"):
        list(read_corpus(tmp_path / "missing", skipped))


def test_filters_count_every_skip_by_reason(tmp_path, count_tokens):
    from tenfold.synth.corpus import Document, text_id

    english = "The committee met on Tuesday to discuss the budget for the coming year, and agreed to fund the library."
    german = ("Der Ausschuss traf sich am Dienstag, um den Haushalt für das kommende Jahr zu besprechen und "
              "die Bibliothek.")
    texts = [english, english, german, "The cat sat.", english + " " + english * 20]
    documents = [Document(text_id(t), t, "test", f"doc{i}") for i, t in enumerate(texts)]
    skipped, short = Counter(), []
    kept = list(filter_documents(documents, count_tokens, 10, 400, skipped, language="en",
                                 too_short=lambda d, _tokens: short.append(d.text)))
    assert [d.text for d, _ in kept] == [english]
    assert kept[0][1] == count_tokens(english)
    assert skipped == Counter(duplicate=1, language=1, too_short=1, too_long=1)
    assert short == ["The cat sat."]


def test_chunks_tile_the_text_within_the_limit_at_paragraph_then_sentence_boundaries(count_tokens):
    paragraphs = [" ".join(f"Sentence {p}.{s} has some words in it." for s in range(3 + p % 4)) for p in range(30)]
    paragraphs[7] = " ".join(f"Long paragraph sentence number {s} goes on." for s in range(30))  # > one chunk alone
    text = "\n\n".join(paragraphs)
    chunks = chunk_text(text, count_tokens, max_tokens=400)
    assert "".join(c.text for c in chunks) == text
    assert [c.start for c in chunks[1:]] == [c.end for c in chunks[:-1]]
    assert all(count_tokens(c.text) <= 400 for c in chunks)
    assert len(chunks) > 5
    for chunk in chunks[:-1]:
        assert chunk.text[-1].isspace()  # never inside a word
        inside_long = text.index(paragraphs[7]) < chunk.end < text.index(paragraphs[8])  # ends inside it
        assert chunk.text.endswith("\n\n") or (inside_long and re.search(r"\.\s+$", chunk.text)), chunk.text[-40:]


def test_a_word_longer_than_a_chunk_stays_whole(count_tokens):
    word = "x" * 2000
    text = f"short start . {word} short end ."
    chunks = chunk_text(text, count_tokens, max_tokens=50)
    assert "".join(c.text for c in chunks) == text
    assert any(c.text.strip() == word for c in chunks)


def test_chunks_stay_within_the_limit_when_token_counts_do_not_add_up():
    def count_tokens(text):  # one token per word, plus one per blank line between paragraphs (a seam cost)
        return len(text.split()) + text.strip().count("\n\n")

    text = "\n\n".join(" ".join(f"w{p}x{i}" for i in range(10)) for p in range(12))
    chunks = chunk_text(text, count_tokens, max_tokens=30)
    assert "".join(c.text for c in chunks) == text
    assert all(count_tokens(c.text) <= 30 for c in chunks)
    assert len(chunks) == 6  # two paragraphs each: a third would fit by the sum of counts, not by the real count
