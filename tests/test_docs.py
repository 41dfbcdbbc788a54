"""The repository's own promises about itself: README anchors point at what they name, nothing refers to files
outside the repository, every flag has a help string, no product file is over 600 lines, README under 10 KB."""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = sorted(p for p in ROOT.glob("*.py") if p.name != "bench.py")


def test_readme_anchors_point_at_their_definitions():
    text = (ROOT / "README.md").read_text()
    anchors = re.findall(r"`([\w.]+)`, \[(\w+\.py):(\d+)\]\(\2#L\3\)", text)
    assert len(set(anchors)) >= 5, anchors
    for name, file, line in set(anchors):
        lines = (ROOT / file).read_text().splitlines()[:int(line)]
        cls, _, member = name.rpartition(".")
        assert re.match(rf"\s*(def|class) {member}\b", lines[-1]), f"{file}:{line} is {lines[-1]!r}, not {name}"
        owner = next((x for x in reversed(lines[:-1]) if x.startswith("class ")), "")
        assert not cls or owner.startswith(f"class {cls}"), f"{file}:{line} is in {owner!r}, not {cls}"


def test_nothing_refers_outside_the_repository():
    for p in PRODUCT + [ROOT / "bench.py"]:
        text = p.read_text()
        for bad in ("RECIPE.md", "DEMO.md", "../shared", '"shared"'):
            assert bad not in text, f"{p.name} refers to {bad}"


def test_every_flag_has_help_and_files_stay_readable():
    for p in PRODUCT + [ROOT / "bench.py"]:
        tree = ast.parse(p.read_text())
        for call in ast.walk(tree):
            if isinstance(call, ast.Call) and getattr(call.func, "attr", None) == "add_argument":
                names = [a.value for a in call.args if isinstance(a, ast.Constant)]
                assert any(k.arg == "help" for k in call.keywords), f"{p.name}:{call.lineno} {names} has no help"
    sizes = {p.name: len(p.read_text().splitlines()) for p in PRODUCT}
    assert max(sizes.values()) <= 600, sizes
    assert len((ROOT / "README.md").read_bytes()) <= 10 * 1024
