"""Files between the pipeline's steps: JSONL read and written with one error policy, the one atomic write,
the append-only log that makes synth and eval resumable, and tenfold's cache folder.

Every failure that a user can fix (a binary or non-UTF-8 file, a line that is not JSON, a full disk) is a
one-line error naming the file, the line and the fix.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Iterable, Iterator

from tqdm import tqdm

from tenfold.errors import RecordError, UserError


def warn(message: str) -> None:
    tqdm.write(message, file=sys.stderr)  # keeps progress bars intact


def cache_dir() -> Path:
    """Where downloads and conversions are kept: $TENFOLD_CACHE, else ~/.cache/tenfold."""
    return Path(os.environ.get("TENFOLD_CACHE") or Path.home() / ".cache" / "tenfold")


def file_sha256(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def binary_file(path: str | Path, head: bytes, first_line: int = 1) -> RecordError | None:
    """A NUL byte in a file's head (its first 8 KiB, as git and grep look) marks a binary file, not JSON Lines."""
    if b"\0" not in head:
        return None
    line = first_line + head.count(b"\n", 0, head.index(b"\0"))
    return RecordError(f"{path}, line {line}: a NUL byte, so a binary file, not JSON Lines; "
                       f"give a .jsonl file of one JSON object per line")


def text_line(path: str | Path, number: int, raw: bytes) -> str:
    """A JSONL line's bytes as text; a binary file or bytes that are not UTF-8 are a RecordError naming the line."""
    if error := binary_file(path, raw, number):
        raise error
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecordError(f"{path}, line {number}, column {e.start + 1}: byte 0x{raw[e.start]:02x} is not UTF-8; "
                          f"save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None


def check_jsonl_bytes(path: str | Path, data: bytes) -> None:
    """A whole JSONL file's bytes: empty, binary or not UTF-8 is a RecordError naming the file, the line and the fix."""
    if not data.strip():
        raise RecordError(f"{path}: empty (no records); give a JSONL file with one JSON object per line, "
                          f"or leave it out")
    if error := binary_file(path, data[:8192]):
        raise error
    try:
        bad = data.index(b"\0")
    except ValueError:
        try:
            data.decode("utf-8")
            return
        except UnicodeDecodeError as e:
            bad = e.start
    start = data.rfind(b"\n", 0, bad) + 1
    end = data.find(b"\n", bad)
    text_line(path, data.count(b"\n", 0, bad) + 1, data[start:end if end >= 0 else len(data)])


def read_jsonl(path: str | Path) -> Iterator[dict]:
    """Yield one record per non-blank line of a JSONL file."""
    with open(path, "rb") as f:
        for line_number, raw in enumerate(f, start=1):
            line = text_line(path, line_number, raw)
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as e:
                raise RecordError(f"{path}, line {line_number}: not valid JSON ({e.msg}); "
                                  f"each line must hold exactly one JSON object") from None


def write_jsonl(records: Iterable[dict], path: str | Path) -> Path:
    """The records as a JSONL file, written whole or not at all (see write_atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))
    return path


def write_error(path: Path, error: OSError, elsewhere: str) -> UserError:
    """A failed write (a full disk, no permission) as one line: the path, why, and that a rerun resumes."""
    return UserError(f"could not write {path}: {error.strerror or error}; free space (or give another {elsewhere}) "
                     f"and run the same command again: what was written before is kept")


def write_atomic(path: str | Path, text: str, elsewhere: str = "output directory") -> None:
    """The whole text or the old file: written beside it and renamed; a failed write leaves no temp file."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise write_error(path, e, elsewhere) from None


class AppendLog:
    """An append-only JSONL file of finished records, each with an "id": what makes synth and eval resumable.

    `finished()` reads back what is done (streamed: the file may be gigabytes), after dropping a last line cut
    off by a kill; `append()` adds records, one write() per record, fsynced, and never leaves half a line."""

    def __init__(self, path: str | Path, elsewhere: str = "--output", fix: str = "use a new output file"):
        self.path, self.elsewhere, self.fix = Path(path), elsewhere, fix

    def finished(self, keep_records: bool = True) -> dict[str, dict | None]:
        """Finished records by id (values None unless keep_records)."""
        done, offset, cut = {}, 0, None
        if not self.path.exists():
            return done
        with open(self.path, "rb") as f:
            for number, line in enumerate(f, start=1):
                if not line.endswith(b"\n"):
                    cut = offset
                    break
                offset += len(line)
                if line.strip():
                    try:
                        record = json.loads(line)
                        done[record["id"]] = record if keep_records else None
                    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
                        raise RecordError(f"{self.path}, line {number}: not a finished record; {self.fix}") from None
        if cut is not None:
            os.truncate(self.path, cut)
            warn(f"{self.path}: dropped an unfinished last line (an interrupted run); its record is redone")
        return done

    def append(self, records: Iterable[dict]) -> None:
        fd = self.open()
        try:
            for record in records:
                self.append_to(fd, record)
            os.fsync(fd)
        finally:
            os.close(fd)

    def open(self) -> int:
        """A descriptor that appends to the log (its folder made first); no permission is a one-line error."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as e:
            raise write_error(self.path, e, self.elsewhere) from None

    def append_to(self, fd: int, record: dict) -> None:
        """One record on an open descriptor of the log (synth keeps one open while its requests run)."""
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode()
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            while data:  # one write() per record in practice; a partial one is finished here or dropped on restart
                data = data[os.write(fd, data):]
        except OSError as e:
            os.ftruncate(fd, start)  # no half line: the records before it stay whole
            raise write_error(self.path, e, self.elsewhere) from None
