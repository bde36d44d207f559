"""The package as installed: CI (.ci/run, cibuildwheel) installs the built wheel into a fresh
environment and sets INSTAHIDE_EXPECT_INSTALLED=1; then the tests must have imported that
wheel, not src/, and the wheel must hold every module of the source tree (the subpackages'
too), the compiled core, its type stub and py.typed. The stub is checked against the compiled
module everywhere."""

import ast
import os
import sysconfig
from pathlib import Path

import pytest

import instahide
from instahide import _core

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "src" / "instahide"
PACKAGE = Path(instahide.__file__).resolve().parent
installed = pytest.mark.skipif(os.environ.get("INSTAHIDE_EXPECT_INSTALLED") != "1",
                               reason="INSTAHIDE_EXPECT_INSTALLED=1 only where CI tests an installed wheel")


@installed
def test_instahide_is_imported_from_site_packages():
    site = {Path(sysconfig.get_paths()[name]).resolve() for name in ("purelib", "platlib")}
    assert PACKAGE.parent in site, f"instahide imported from {PACKAGE}, not from {sorted(map(str, site))}"
    assert SOURCE.resolve() != PACKAGE


@installed
@pytest.mark.skipif(not SOURCE.is_dir(), reason="needs the source tree")
def test_the_wheel_holds_every_module_the_stub_and_py_typed():
    files = {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*") if p.is_file()}
    modules = {p.relative_to(SOURCE).as_posix() for p in SOURCE.rglob("*.py")}
    assert {"torch/__init__.py", "attacks/__init__.py", "cli/__init__.py"} <= modules
    missing = (modules | {"_core.pyi", "py.typed"}) - files
    assert not missing, f"not in the installed package: {sorted(missing)}"
    assert [name for name in files if name.startswith("_core.") and name.endswith((".so", ".pyd"))]


def _stub_functions() -> dict[str, list[str]]:
    """name -> argument names (positional and keyword-only) of the stub's functions and of its
    classes' static methods (as Class.method)."""
    stub = Path(_core.__file__).with_name("_core.pyi")
    if not stub.exists():
        stub = SOURCE / "_core.pyi"

    def arguments(node: ast.FunctionDef) -> list[str]:
        return [a.arg for a in node.args.args + node.args.kwonlyargs]

    functions = {}
    for node in ast.parse(stub.read_text()).body:
        if isinstance(node, ast.FunctionDef):
            functions[node.name] = arguments(node)
        elif isinstance(node, ast.ClassDef):
            for method in node.body:
                static = any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in method.decorator_list
                             ) if isinstance(method, ast.FunctionDef) else False
                if static:
                    functions[f"{node.name}.{method.name}"] = arguments(method)
    return functions


def _compiled_functions() -> dict:
    """name -> the compiled core's function (and Class.method for its classes' static methods)."""
    functions = {}
    for name in dir(_core):
        if name.startswith("_"):
            continue
        member = getattr(_core, name)
        if isinstance(member, type):
            for method in dir(member):
                if not method.startswith("_") and isinstance(member.__dict__.get(method), staticmethod):
                    functions[f"{name}.{method}"] = getattr(member, method)
        else:
            functions[name] = member
    return functions


def test_the_stub_declares_every_function_of_the_compiled_core_with_its_arguments():
    stub, compiled = _stub_functions(), _compiled_functions()
    assert sorted(stub) == sorted(compiled)
    for name, function in compiled.items():
        # pybind11 signature line: name(*, arg: type, arg: type = default) -> result
        signature = (function.__doc__ or "").splitlines()[0]
        inside = signature[signature.index("(") + 1:signature.rindex(") ->")]
        depth, parts, part = 0, [], ""
        for char in inside:  # split at the top level's commas (types have brackets)
            depth += char in "[(" and 1 or char in "])" and -1 or 0
            if char == "," and depth == 0:
                parts.append(part)
                part = ""
            else:
                part += char
        arguments = [p.split(":")[0].strip() for p in [*parts, part] if ":" in p]
        assert stub[name] == arguments, name
