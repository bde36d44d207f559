"""The README's Python examples run as written, and the commands it names exist."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_the_readme_has_the_numpy_and_torch_examples():
    assert len(BLOCKS) == 2 and "encoder.encode" in BLOCKS[0] and "InstaHideLoader" in BLOCKS[1]
    assert all(len(block.strip().splitlines()) <= 16 for block in BLOCKS)


@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=["numpy", "torch"][:len(BLOCKS)])
def test_readme_example_runs(index):
    code = BLOCKS[index]
    if "import torch" in code:
        pytest.importorskip("torch")
    scope = {}
    exec(compile(code, f"README.md python block {index}", "exec"), scope)
    if "encoder.encode" in code:  # the numpy example's last batch: the shapes its comment promises
        assert scope["x"].shape == (500, 3, 32, 32) and scope["y"].shape == (500, 10)
    if "loss" in scope:
        import math

        assert math.isfinite(scope["loss"].item())


def test_readme_commands_exist():
    from instahide.cli import build_parser

    parser = build_parser()[0]
    choices = next(a for a in parser._actions if a.dest == "command").choices
    named = set(re.findall(r"`instahide ([a-z]+)", README.read_text()))
    assert named and named <= set(choices)
