"""The import graph of src/tenfold runs one way: cli -> demo and plan -> the verbs (synth, mix, train, merge,
eval) -> the floor of shared modules (errors, config, io, recipe, records, models, rope, generation, toy), which
may import each other. No verb reaches into another verb; nothing imports upward."""

import ast
from pathlib import Path

import tenfold

SRC = Path(tenfold.__file__).resolve().parent
FLOORS = {"cli": 3, "demo": 2, "plan": 2, "synth": 1, "mix": 1, "train": 1, "merge": 1, "eval": 1,
          "errors": 0, "config": 0, "io": 0, "recipe": 0, "records": 0, "models": 0, "rope": 0, "generation": 0,
          "toy": 0, "__init__": 0}
SIDEWAYS: set[tuple[str, str]] = set()  # verb -> verb edges allowed: none


def unit(module: str) -> str:
    """The floor-holder of a dotted module under tenfold: its package (data, eval, ...) or top-level module."""
    return module.split(".")[1] if module.count(".") else "__init__"


def imports(path: Path) -> set[str]:
    """Every tenfold module the file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "tenfold":
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "tenfold")
    return found


def upward_imports(src: Path = SRC) -> list[str]:
    wrong = []
    for path in sorted(src.rglob("*.py")):
        module = ".".join(("tenfold", *path.relative_to(src).with_suffix("").parts))
        here = unit(module)
        assert here in FLOORS, f"{path}: give {here} a floor in FLOORS"
        for target in imports(path):
            there = unit(target)
            if there == here or FLOORS[there] < FLOORS[here] or FLOORS[there] == FLOORS[here] == 0 \
                    or (here, there) in SIDEWAYS:
                continue
            wrong.append(f"{module} imports {target}")
    return wrong


def test_no_import_runs_up_a_floor_or_sideways_outside_the_documented_edges():
    assert upward_imports() == []


def test_the_check_sees_an_upward_import(tmp_path):
    for name in ("models.py", "recipe.py"):
        (tmp_path / name).write_text("")
    (tmp_path / "synth").mkdir()
    (tmp_path / "synth" / "run.py").write_text("def f():\n    from tenfold.train.model import load_base_model\n")
    (tmp_path / "models.py").write_text("from tenfold.eval import BENCHMARKS\n")
    assert upward_imports(tmp_path) == ["tenfold.models imports tenfold.eval",
                                        "tenfold.synth.run imports tenfold.train.model"]


def test_tests_mirror_src():
    """tests/<package>/ holds the tests of src/tenfold/<package>/; the floor modules' and top-level verbs' tests
    are in tests/ itself."""
    tests = Path(__file__).resolve().parent
    folders = {p.name for p in tests.iterdir() if p.is_dir() and p.name not in ("fixtures", "__pycache__")}
    packages = {p.name for p in SRC.iterdir() if (p / "__init__.py").is_file()}
    assert folders and folders <= packages
