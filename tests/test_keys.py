"""Key names live in ``monai_mcx/keys.py`` only (issue 21 item 3).

An AST scan of ``monai_mcx/**/*.py`` (``keys.py`` excluded) for string constants equal to a value of one of
``keys.py``'s enums, where a string is used AS A KEY: a subscript (``d["mask"]``), a dict literal key
(``{"mask": ...}``), the first argument of ``.get`` / ``.pop`` / ``.setdefault``, or an operand of a comparison
(``t == "segmentation"``, ``"mask" in d``, ``k in ("boxes", "labels")``). Docstrings and f-string text are never
in those places; message text is not flagged. The code writes the enum member (or its ``.value``) instead.
"""

from __future__ import annotations

import ast
import enum
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

from monai_mcx import keys

PACKAGE = Path(keys.__file__).parent
ROOT = PACKAGE.parent

#: (file relative to the repository root, value) -> why that string is not one of the keys it coincides with
ALLOWED: dict[tuple[str, str], str] = {
    ("monai_mcx/data/datalist.py", "error"): "UNCERTAIN_POLICIES names the uncertain-label policy 'error', not a key",
    ("monai_mcx/data/pixels.py", "error"): "grey_masks='error' names a grey-mask policy, not a key",
    ("monai_mcx/handlers/predictions.py", "positive"): "the prediction JSON's gate.positive (the gate's decision)",
    ("monai_mcx/handlers/prediction_table.py", "positive"): "the prediction JSON's gate.positive (the gate's decision)",
    (
        "monai_mcx/metrics/population_points.py",
        "gate",
    ): "an operating point's 'methods' entry naming the gate rule used",
    ("monai_mcx/dicom/outputs.py", "positive"): "the prediction JSON's gate.positive (the gate's decision)",
    ("monai_mcx/handlers/output_folder.py", "image"): "the run manifest's event name 'image', not a key",
    ("monai_mcx/data/public/covid.py", "image"): "a column of the COVID-QU-Ex / ieee8023 box CSV (an input format)",
    ("monai_mcx/data/public/covid.py", "label"): "a column of the COVID-QU-Ex / ieee8023 box CSV (an input format)",
    ("monai_mcx/data/public/siim.py", "positive"): "a field of the SIIM adapter's RLE record, not a batch key",
    ("monai_mcx/data/public/siim_covid.py", "image"): "a column of the SIIM-FISABIO-RSNA labels.csv (an input format)",
    ("monai_mcx/data/synthetic.py", "lungs"): "the synthetic anatomy's lung ellipses, not the lungs task",
}

_GETTERS = {"get", "pop", "setdefault"}


def key_values() -> dict[str, list[str]]:
    """``{value: ["Enum.MEMBER", ...]}`` over every ``StrEnum`` of ``monai_mcx.keys``."""
    out: dict[str, list[str]] = {}
    for obj in vars(keys).values():
        if isinstance(obj, type) and issubclass(obj, enum.Enum) and obj.__module__ == keys.__name__:
            for member in obj:
                out.setdefault(member.value, []).append(f"{obj.__name__}.{member.name}")
    return out


def _strings(node: ast.AST | None) -> Iterable[ast.Constant]:
    """The string constants of ``node``: itself, or the elements of a tuple/list/set literal."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        yield node
    elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        for elt in node.elts:
            yield from _strings(elt)


def find_key_literals(source: str, values: Iterable[str], filename: str = "<string>") -> list[tuple[int, str]]:
    """``(line, value)`` of every string constant of ``source`` equal to one of ``values`` and used as a key.

    Args:
        source: Python source text.
        values: the key values (``key_values()``).
        filename: named in a syntax error.

    Returns:
        the hits, sorted by line.
    """
    values = set(values)
    hits: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source, filename)):
        candidates: list[ast.AST | None] = []
        if isinstance(node, ast.Subscript):
            candidates.append(node.slice)
        elif isinstance(node, ast.Dict):
            candidates.extend(node.keys)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _GETTERS:
            candidates.extend(node.args[:1])
        elif isinstance(node, ast.Compare):
            candidates.extend([node.left, *node.comparators])
        for candidate in candidates:
            for const in _strings(candidate):
                if const.value in values:
                    hits.append((const.lineno, const.value))
    return sorted(hits)


def scan_package(package: Path = PACKAGE) -> list[str]:
    """``file:line: 'value' (Enum.MEMBER)`` for every key literal of the package outside ``keys.py``."""
    values = key_values()
    found = []
    for path in sorted(package.rglob("*.py")):
        if path.name == "keys.py" and path.parent == package:
            continue
        rel = path.relative_to(ROOT).as_posix()
        for line, value in find_key_literals(path.read_text(encoding="utf-8"), values, rel):
            if (rel, value) not in ALLOWED:
                found.append(f"{rel}:{line}: {value!r} (use {' or '.join(values[value])})")
    return found


SNIPPET = '''
"""Docstring naming "mask" and {"boxes": 1}."""
def f(batch, t, item):
    """batch["mask"] in a docstring."""
    a = batch["mask"]
    b = {"class_logits": 1, "other": 2}
    c = item.get("patient", None)
    d = t == "segmentation"
    e = "has_boxes" in batch
    g = t in ("scores", "unrelated")
    h = f"{t}mask"
    i = batch["unrelated"]
    j = print("mask", "boxes")
    return a, b, c, d, e, g, h, i, j
'''


def test_scanner_finds_planted_literals():
    hits = find_key_literals(SNIPPET, key_values())
    assert hits == [
        (5, "mask"),
        (6, "class_logits"),
        (7, "patient"),
        (8, "segmentation"),
        (9, "has_boxes"),
        (10, "scores"),
    ]


def test_scanner_flags_a_planted_literal_in_the_package(tmp_path):
    pkg = tmp_path / "monai_mcx"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "keys.py").write_text('X = {"mask": 1}\n')  # keys.py itself is the one place allowed
    (pkg / "sub" / "mod.py").write_text('def f(d):\n    return d["seg_logits"]\n')
    global ROOT
    root, ROOT = ROOT, tmp_path
    try:
        assert scan_package(pkg) == ["monai_mcx/sub/mod.py:2: 'seg_logits' (use PredKeys.SEG_LOGITS)"]
    finally:
        ROOT = root


def test_every_enum_is_scanned():
    values = key_values()
    for name in ("classification", "image", "source", "class_logits", "scores", "size_wh", "mask_ungated"):
        assert name in values, name
    assert keys.TASKS == ("classification", "segmentation", "localization")
    assert all(type(t) is str for t in keys.TASKS)


def test_keys_do_not_import_monai():
    """Key names are light: importing them loads neither MONAI nor (through it) matplotlib."""
    code = "import sys, monai_mcx.keys; sys.exit(int('monai' in sys.modules or 'matplotlib' in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], check=False, cwd=ROOT).returncode == 0


def test_allow_list_is_needed():
    """Every allow-list entry still matches a literal (a stale entry would hide a new one)."""
    values = key_values()
    for rel, value in ALLOWED:
        hits = find_key_literals((ROOT / rel).read_text(encoding="utf-8"), values, rel)
        assert any(v == value for _, v in hits), f"{rel}: {value!r} is allowed but no longer used"


def test_no_key_literals_outside_keys_py():
    found = scan_package()
    if found:
        pytest.fail(f"{len(found)} key literal(s) outside monai_mcx/keys.py:\n" + "\n".join(found))
