"""The docs' measured tables are what benchmarks/doc_tables.py prints from the committed results
files, with every row's commit and its staleness against HEAD."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import doc_tables  # noqa: E402
import provenance  # noqa: E402

needs_history = pytest.mark.skipif(
    not (provenance.provenance()["commit"] and provenance.history_available(doc_tables.results_commits())),
    reason="not a git checkout holding every results row's commit (a shallow clone, an sdist): staleness cannot be "
           "decided")


@needs_history
def test_docs_tables_match_the_results_files():
    found = doc_tables.differences()
    assert not found, ("tables in the docs differ from the results files; run `python benchmarks/doc_tables.py`:\n"
                       + "\n".join(found.values()))


def test_every_table_block_names_a_known_table():
    for doc in doc_tables.DOCS:
        names = [match["name"] for match in doc_tables.BLOCK.finditer((doc_tables.REPO / doc).read_text())]
        assert set(names) <= set(doc_tables.TABLES), (doc, names)
    used = {match["name"] for doc in doc_tables.DOCS
            for match in doc_tables.BLOCK.finditer((doc_tables.REPO / doc).read_text())}
    assert used == set(doc_tables.TABLES), f"tables printed nowhere: {set(doc_tables.TABLES) - used}"


def test_render_replaces_only_the_blocks():
    text = "before\n<!-- table: tier1-fake -->\nold\n<!-- end table -->\nafter\n"
    original = dict(doc_tables.TABLES)
    doc_tables.TABLES["tier1-fake"] = lambda: "| a |\n|---|\n| 1 |"
    try:
        assert doc_tables.render(text) == ("before\n<!-- table: tier1-fake -->\n| a |\n|---|\n| 1 |\n"
                                           "<!-- end table -->\nafter\n")
    finally:
        doc_tables.TABLES.clear()
        doc_tables.TABLES.update(original)
    with pytest.raises(KeyError, match="unknown table"):
        doc_tables.render("<!-- table: nonesuch -->\n<!-- end table -->")


@needs_history
def test_staleness_follows_the_code_of_each_kind():
    head = provenance.provenance()["commit"]
    assert provenance.staleness({"commit": head, "dirty": []}, "privacy") is None
    assert provenance.staleness({}, "privacy") == "no commit recorded"
    dirty = provenance.staleness({"commit": head, "dirty": ["src/instahide/attacks/metrics.py"]}, "privacy")
    assert dirty and "uncommitted" in dirty
    assert provenance.staleness({"commit": head, "dirty": ["README.md"]}, "privacy") is None
    # the first commit that touched csrc: every later csrc commit makes its rows stale
    first = subprocess.run(["git", "-C", str(provenance.REPO), "log", "--format=%H", "--reverse", "--", "csrc"],
                           capture_output=True, text=True, check=True).stdout.split()[0]
    reason = provenance.staleness({"commit": first, "dirty": []}, "throughput")
    assert reason and reason.startswith("csrc changed in ") and first[:7] in reason
    assert provenance.staleness({"commit": "0" * 40, "dirty": []}, "throughput").endswith("history")


def test_results_rows_name_their_commit():
    for path in (doc_tables.PRIVACY_CHALLENGE, doc_tables.PRIVACY_AUGMENTED, doc_tables.PRIVACY_TIER1):
        if path.exists():
            rows = json.loads(path.read_text())
            assert rows and all(len(row["commit"]) == 40 for row in rows), path
    for entry in json.loads(doc_tables.ACCURACY.read_text())["methods"]:
        assert len(entry["commit"]) == 40, entry["method"]


@needs_history
def test_neutral_commits_exist_and_are_not_counted():
    for kind, commits in provenance.NEUTRAL.items():
        paths, excluded = provenance.CODE[kind]
        for commit, why in commits.items():
            assert len(commit) == 40 and len(why) > 40, (kind, commit)
            touched = subprocess.run(["git", "-C", str(provenance.REPO), "show", "--format=", "--name-only", commit],
                                     capture_output=True, text=True, check=True).stdout.split()
            assert any(path.startswith(paths) for path in touched), f"{commit[:7]} touches no {kind} code"
            # a row measured just before the neutral commit is not made stale by it alone
            parent = subprocess.run(["git", "-C", str(provenance.REPO), "rev-parse", f"{commit}^"],
                                    capture_output=True, text=True, check=True).stdout.strip()
            assert commit[:7] not in (provenance.changes_since(parent, kind) or ())
