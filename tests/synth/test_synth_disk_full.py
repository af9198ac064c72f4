"""A full disk in synth (issue 14): a failed cache or output write is one line naming the path, exit 2, no temp
file left behind, nothing already written lost; the same command, run again with space, finishes the work."""

import errno
import os
import pathlib

import pytest
from test_synth import records_of, write_corpus

from tenfold.cli import main

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def synth_argv(corpus, output):
    return ["synth", "--corpus", str(corpus), "--output", str(output), "--tasks", "single_detail,multi_detail",
            "--min-tokens", "400", "--max-tokens", "3000", "--chunk-tokens", "300", "--tokenizer", "tenfold/tiny-llama"]


def full_disk_run(tmp_path, capsys, corpus, output, monkeypatch, patch):
    """Run synth with `patch` applied; it must fail with exit 2 and one line; then run it again with space."""
    with monkeypatch.context() as m:
        patch(m)
        with pytest.raises(SystemExit) as exit:
            main(synth_argv(corpus, output))
    err = capsys.readouterr().err
    assert exit.value.code == 2 and "Traceback" not in err and "Task exception" not in err
    line = err.strip().splitlines()[-1]
    assert [path.name for path in tmp_path.rglob("*.tmp*")] == []
    written = records_of(output)  # every line whole: a cut line would not parse
    main(synth_argv(corpus, output))
    return line, written


@pytest.fixture
def clean(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", n_toy=6, with_story=False, with_short=False)
    main(synth_argv(corpus, tmp_path / "clean" / "synth.jsonl"))
    return corpus, records_of(tmp_path / "clean" / "synth.jsonl")


def test_a_full_disk_while_caching_a_reply_names_the_cache_file_and_leaves_no_temp_file(
        tmp_path, capsys, monkeypatch, clean):
    corpus, expected = clean
    output, real_write_text, calls = tmp_path / "out" / "synth.jsonl", pathlib.Path.write_text, []

    def fill_up(path, text, *args, **kwargs):
        if ".tmp" in path.name and "cache" in str(path):
            calls.append(path)
            if len(calls) > 5:  # the disk fills while a reply is half written
                real_write_text(path, text[:len(text) // 2])
                raise ENOSPC
        return real_write_text(path, text, *args, **kwargs)

    line, written = full_disk_run(tmp_path, capsys, corpus, output, monkeypatch,
                                  lambda m: m.setattr(pathlib.Path, "write_text", fill_up))
    assert line.startswith(f"tenfold synth: error: could not write {output}.cache/")
    assert "No space left on device" in line and "run the same command again" in line
    assert 1 <= len(written) < len(expected) and all(record in expected for record in written)
    assert sorted(records_of(output), key=lambda r: r["id"]) == sorted(expected, key=lambda r: r["id"])


def test_a_full_disk_while_appending_a_record_names_the_output_and_cuts_no_record_in_half(
        tmp_path, capsys, monkeypatch, clean):
    corpus, expected = clean
    output, real_write, records = tmp_path / "out" / "synth.jsonl", os.write, []

    def fill_up(fd, data):
        if data.startswith(b'{"id"'):
            records.append(data)
            if len(records) > 2:  # the third record finds the disk full halfway
                real_write(fd, data[:len(data) // 2])
                raise ENOSPC
        return real_write(fd, data)

    line, written = full_disk_run(tmp_path, capsys, corpus, output, monkeypatch,
                                  lambda m: m.setattr(os, "write", fill_up))
    assert line == (f"tenfold synth: error: could not write {output}: No space left on device; free space (or "
                    f"give another --output) and run the same command again: what was written before is kept")
    assert written == expected[:2]
    assert sorted(records_of(output), key=lambda r: r["id"]) == sorted(expected, key=lambda r: r["id"])
