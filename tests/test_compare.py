"""benchmarks/compare/run.py on a tiny synthetic budget: plain and InstaHide measured, the
methods whose packages are missing (opacus, crypten, tenseal: blocked here, whatever is
installed) reported as skipped with the reason, and results.json/results.md written."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

RUN = Path(__file__).resolve().parents[1] / "benchmarks" / "compare" / "run.py"
SKIPPED = {"dpsgd_opacus": "opacus", "crypten_1process": "crypten", "crypten_2party": "crypten",
           "tenseal_ckks_infer": "tenseal"}


@pytest.fixture
def compare(monkeypatch):
    for name in ("opacus", "crypten", "tenseal"):  # as in CI, where they are not installed
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.syspath_prepend(str(RUN.parent))
    spec = importlib.util.spec_from_file_location("compare_run", RUN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compare_plain_and_instahide_tiny_budget(compare, tmp_path):
    results = compare.main(["--out", str(tmp_path), "--synthetic", "128", "--batch-size", "32", "--steps", "2",
                            "--rounds", "2", "--warmup", "1", "--epochs", "1", "--he-epochs", "1", "--threads", "2"])
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["results"] == json.loads(json.dumps(results["results"]))
    rows = {r["method"]: r for r in on_disk["results"]}
    assert set(rows) == set(compare.ALL)
    for row in rows.values():
        assert {"method", "kind", "samples_per_s", "slowdown_vs_plain", "accuracy", "epochs", "steps",
                "privacy", "status"} <= set(row)
        assert row["kind"] in ("train", "infer")

    for method, package in SKIPPED.items():
        assert rows[method]["status"] == "skipped"
        assert package in rows[method]["note"] and "pip install" in rows[method]["note"]
        assert rows[method]["samples_per_s"] is None
    assert set(on_disk["missing"]) >= {"opacus", "crypten", "tenseal"}

    measured = ["plain", "instahide_inside_k4", "instahide_cross_2+4", "instahide_torch_ops_k4",
                "plain_infer_he_model"]
    for method in measured:
        row = rows[method]
        assert row["status"] == "ok", row
        assert row["samples_per_s"] > 0 and math.isfinite(row["samples_per_s"])
        assert row["slowdown_vs_plain"] > 0 and math.isfinite(row["slowdown_vs_plain"])
        assert 0.0 <= row["accuracy"] <= 1.0
        assert row["epochs"] == 1
    assert rows["plain"]["slowdown_vs_plain"] == 1.0
    assert rows["instahide_inside_k4"]["privacy"] == "InstaHide inside k=4"
    assert rows["instahide_inside_k4"]["steps"] == 4

    table = (tmp_path / "results.md").read_text()
    assert "| method | kind | samples/s | slowdown vs plain |" in table
    assert "| dpsgd_opacus | train | skipped |" in table
    assert (tmp_path / "slowdown.png").exists() or "matplotlib" in on_disk["missing"]
