"""The progress bar of the training loops (`instahide train`'s and the fast recipe's): a tqdm
bar per epoch, or None when quiet or without tqdm."""

from __future__ import annotations


def _progress(total: int, desc: str, quiet: bool):
    if quiet:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, leave=False)
