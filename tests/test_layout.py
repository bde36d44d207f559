"""The package's layout by layer: the encoder core at the top, instahide.torch, instahide.attacks
and instahide.cli as subpackages. The modules that moved keep importing under their old names
(the same module objects, with a DeprecationWarning naming the new path), the public names
stay where they were, and `import instahide` leaves torch alone."""

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import instahide

MOVED = {
    "instahide.models": "instahide.torch.models",
    "instahide.recipe": "instahide.torch.recipe",
    "instahide.demo": "instahide.cli.demo",
    "instahide.train": "instahide.cli.train",
    "instahide.bench": "instahide.cli.bench",
}
NEEDS_TORCH = {"instahide.models", "instahide.recipe", "instahide.demo", "instahide.train"}
PACKAGE = Path(instahide.__file__).resolve().parent


def _forget(monkeypatch, old: str) -> None:
    """As if `old` had never been imported in this process (restored afterwards)."""
    monkeypatch.delitem(sys.modules, old, raising=False)
    monkeypatch.delattr(instahide, old.rsplit(".", 1)[1], raising=False)


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_module_path_imports_the_new_module_itself_and_warns(old, monkeypatch):
    if old in NEEDS_TORCH:
        pytest.importorskip("torch")
    new = importlib.import_module(MOVED[old])
    _forget(monkeypatch, old)
    with pytest.warns(DeprecationWarning, match=f"{old} moved to {MOVED[old]}"):
        module = importlib.import_module(old)
    assert module is new and sys.modules[old] is new
    assert getattr(instahide, old.rsplit(".", 1)[1]) is new  # `from instahide import train` too
    assert new.__name__ == MOVED[old] and new.__spec__.name == MOVED[old]  # its own name and spec kept


@pytest.mark.parametrize("old", sorted(MOVED))
def test_the_old_import_forms_work(old, monkeypatch):
    if old in NEEDS_TORCH:
        pytest.importorskip("torch")
    package, name = old.rsplit(".", 1)
    new = importlib.import_module(MOVED[old])
    public = sorted(n for n in vars(new) if not n.startswith("_") and getattr(vars(new)[n], "__module__", None)
                    == MOVED[old])
    assert public
    for statement in (f"import {old} as module", f"from {package} import {name} as module",
                      f"from {old} import {public[0]} as member"):
        _forget(monkeypatch, old)
        scope: dict = {}
        with pytest.warns(DeprecationWarning):
            exec(statement, scope)
        if "module" in scope:
            assert scope["module"] is new
        else:
            assert scope["member"] is getattr(new, public[0])


def test_patching_through_the_old_name_patches_the_new_module(monkeypatch):
    pytest.importorskip("torch")
    import instahide.cli.train

    _forget(monkeypatch, "instahide.train")
    with pytest.warns(DeprecationWarning):
        from instahide import train
    sentinel = object()
    monkeypatch.setattr(train, "evaluate", sentinel)
    assert instahide.cli.train.evaluate is sentinel


def test_public_names_stay_where_they_were():
    import instahide.attacks
    import instahide.cli

    for name in ("Encoder", "Keys", "PublicPool", "mask", "reference", "build_info"):
        assert hasattr(instahide, name)
    for name in ("main", "build_parser", "info", "cpu_features", "EXAMPLES"):
        assert hasattr(instahide.cli, name)
    assert callable(instahide.cli.info) and callable(instahide.cli.cpu_features)
    for name in instahide.attacks.__all__:  # every public function and class comes from a submodule
        value = getattr(instahide.attacks, name)
        if callable(value):
            assert value.__module__.startswith("instahide.attacks."), name
    assert instahide.attacks.SETTINGS is instahide.attacks.challenge.SETTINGS
    for name in ("audit", "make_challenge", "run_known_mixing", "run_encodings_only", "score", "save_grid",
                 "challenge_scores", "ssim_matrix", "publish", "mixing_matrix", "Scores", "Challenge"):
        assert name in instahide.attacks.__all__


def test_instahide_torch_exports_what_it_did():
    pytest.importorskip("torch")
    import instahide.torch

    assert instahide.torch.__all__ == ["EncodedBatches", "InstaHideLoader", "InstaHideMix", "soft_cross_entropy",
                                       "predict"]
    assert all(hasattr(instahide.torch, name) for name in instahide.torch.__all__)


def test_import_instahide_imports_neither_torch_nor_an_old_path():
    code = ("import sys; import instahide, instahide.cli, instahide.attacks, instahide.shards, instahide.datasets; "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "assert not [m for m in sys.modules if m in ('instahide.models', 'instahide.recipe', 'instahide.train', "
            "'instahide.demo', 'instahide.bench')]")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=PACKAGE.parent)


def test_python_m_instahide_cli_runs_the_command():
    result = subprocess.run([sys.executable, "-W", "error:instahide:DeprecationWarning", "-m", "instahide.cli", "info"],
                            capture_output=True, text=True, cwd=PACKAGE.parent)
    assert result.returncode == 0, result.stderr
    assert '"version"' in result.stdout


def test_every_module_says_what_it_holds():
    missing = [str(path.relative_to(PACKAGE)) for path in sorted(PACKAGE.rglob("*.py"))
               if path.name != "__main__.py" and not ast.get_docstring(ast.parse(path.read_text()))]
    assert not missing, f"modules without a docstring: {missing}"
