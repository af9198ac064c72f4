"""How the fixture makers (scripts/*_parity_fixture.py) write their fixtures: one JSON file, a case a line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def dump(fixture: dict) -> str:
    """Indented, with each case on one line."""
    text = json.dumps({**fixture, "cases": []}, indent=1, ensure_ascii=False)
    cases = ",\n  ".join(json.dumps(case, ensure_ascii=False) for case in fixture["cases"])
    return text.replace('"cases": []', '"cases": [\n  ' + cases + "\n ]") + "\n"


def write_fixture(doc: str, tree_help: str, build_fixture, default_out: Path) -> tuple[dict, Path]:
    """A maker's command line, `TREE [--out PATH]`: the fixture built from the reference tree, written;
    returns it and where it went."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("tree", type=Path, help=tree_help)
    parser.add_argument("--out", type=Path, default=default_out)
    args = parser.parse_args()
    fixture = build_fixture(args.tree.resolve())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(dump(fixture))
    return fixture, args.out
