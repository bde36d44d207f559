"""Which code measured a results row, and whether that code has changed since.

Every results row (privacy, time to accuracy, throughput) records `provenance()`: the commit
checked out when it was measured and the tracked files that differed from it. A row is stale
when the code behind its kind of figure (`CODE`) changed after the row's commit, or when that
code had uncommitted changes while it ran (the row then belongs to no commit).
`benchmarks/doc_tables.py` prints the docs' tables from the rows and marks stale ones.
"""

from __future__ import annotations

import subprocess
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# The code behind each kind of figure: a change to any of it after a row's commit makes the row stale.
# No privacy row runs Tier 0 (attacks/audit.py: findings as text) or depends on the package's
# re-exports; rows of `run_encodings_only` and Tier 1 do not run the crop-and-flip attack's
# module (attacks/augmented.py); rows of that module run the rest.
# Each kind: (paths, paths within them excluded).
_ATTACKS = "src/instahide/attacks/"
CODE: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "privacy": (("src/instahide/attacks",),
                (_ATTACKS + "augmented.py", _ATTACKS + "__init__.py", _ATTACKS + "audit.py")),
    "privacy-augmented": (("src/instahide/attacks",), (_ATTACKS + "__init__.py", _ATTACKS + "audit.py")),
    "accuracy": (("src/instahide/torch/recipe.py", "src/instahide/torch/models.py", "src/instahide/encoder.py",
                  "src/instahide/_plan.py", "src/instahide/keys.py"), ()),
    "throughput": (("csrc",), ()),
    "anchor": (("benchmarks/airbench94.py",), ()),  # the published recipe's port: none of the package's code
}

# Commits that changed a kind's code without changing what it measures, each with why (and the
# test that shows it): not counted against that kind's rows. Keep it short and justified.
NEUTRAL: dict[str, dict[str, str]] = {
    "accuracy": {
        "2ecd43bd6523dda12fd675d670a01bf6d193eba6": "train_fast's checkpointing (first part): without a checkpoint "
                                                    "the training path is unchanged",
        "657c832d197d8e9e6edcc03d71488d9186924aed": "train_fast's checkpointing: without a checkpoint the training "
                                                    "path is unchanged; with one, tests/test_recipe.py shows a killed "
                                                    "and resumed run equal to the uninterrupted one",
        "21d8c3ae0c8056a155873fa9c206351815627333": "airbench ingredients as FastRecipe options, all off by default: "
                                                    "the default recipe's losses, accuracies and weights were "
                                                    "identical to d6cc5d7's (3 epochs, k = 1 and k = 4, a fixed key "
                                                    "and seed, 2026-12-08)",
    },
    "anchor": {
        "40b1d117f8506d2247ea9c0b5f4ab0b345ea36db": "import order, and a reshape by -1 rows where the rows were "
                                                    "c*h*w: the same computation",
    },
}


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], check=True, capture_output=True, text=True).stdout


def provenance() -> dict:
    """{"commit": HEAD's full hash, "dirty": tracked files with uncommitted changes} of this
    checkout; {"commit": None, ...} outside a git checkout (an unpacked sdist)."""
    try:
        commit = _git("rev-parse", "HEAD").strip()
        dirty = [line[3:] for line in _git("status", "--porcelain", "--untracked-files=no").splitlines() if line]
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": []}
    return {"commit": commit, "dirty": dirty}


@cache
def changes_since(commit: str, kind: str) -> tuple[str, ...] | None:
    """Short hashes of the commits after `commit` (up to HEAD) that touched the code of `kind`;
    None where `commit` is not in this checkout's history (a shallow clone, or no git)."""
    try:
        _git("cat-file", "-e", f"{commit}^{{commit}}")
        paths, excluded = CODE[kind]
        log = _git("log", "--format=%H", f"{commit}..HEAD", "--", *paths, *(f":(exclude){p}" for p in excluded))
    except (OSError, subprocess.CalledProcessError):
        return None
    neutral = NEUTRAL.get(kind, {})
    return tuple(full[:7] for full in log.split() if full not in neutral)


def staleness(row: dict, kind: str) -> str | None:
    """Why the row no longer describes the code at HEAD (None when it does): its code changed
    after its commit, or was uncommitted when it ran, or the row names no commit."""
    commit = row.get("commit")
    if not commit:
        return "no commit recorded"
    paths, excluded = CODE[kind]
    dirty = [path for path in row.get("dirty", []) if path.startswith(paths) and path not in excluded]
    if dirty:
        return f"measured with uncommitted changes to {', '.join(dirty)}"
    changes = changes_since(commit, kind)
    if changes is None:
        return f"commit {commit[:7]} is not in this checkout's history"
    if changes:
        count = f"{len(changes)} commit{'s' if len(changes) > 1 else ''}"
        return f"{', '.join(paths)} changed in {count} after {commit[:7]} (the latest {changes[0]})"
    return None


def history_available(commits) -> bool:
    """Whether every one of `commits` is in this checkout's history (a shallow clone lacks the
    older ones, and then staleness cannot be decided)."""
    try:
        for commit in commits:
            _git("cat-file", "-e", f"{commit}^{{commit}}")
    except (OSError, subprocess.CalledProcessError):
        return False
    return True
