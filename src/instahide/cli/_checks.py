"""Argument checks the commands run before any work: each failure is a ValueError that names the
option, its value and what it may be (`instahide COMMAND: error: ...`, exit status 1)."""

from __future__ import annotations

import os
from pathlib import Path


def need(ok: bool, option: str, value, allowed: str) -> None:
    if not ok:
        raise ValueError(f"{option} {value}: must be {allowed}")


def writable_file(option: str, path) -> None:
    """`path` can be written: its folder exists and takes new files."""
    if path is None:
        return
    folder = Path(path).resolve().parent
    if not folder.is_dir():
        raise ValueError(f"{option} {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK) and not Path(path).exists():
        raise ValueError(f"{option} {path}: the folder {folder} is not writable")


def writable_folder(option: str, path) -> None:
    """`path` is, or can be created as, a writable folder."""
    folder = Path(path).resolve()
    existing = next(parent for parent in (folder, *folder.parents) if parent.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise ValueError(f"{option} {path}: {existing} is not a writable folder")


def available_memory() -> int | None:
    """Bytes of memory available to a new process (Linux's MemAvailable); None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
