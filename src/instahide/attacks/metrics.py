"""Scores of a recovery against the ground truth: `Scores` (SSIM and PSNR per private image,
the chance level, cluster purity), `score` (with Hungarian matching where the recoveries come
in no order), vectorized SSIM (`ssim_matrix`, `ssim_pairs`), the InstaHide Challenge's
per-encoding metrics (`challenge_scores`), `cluster_purity`, and `save_grid`, a PNG of
originals, encodings and recoveries."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .challenge import Challenge


@dataclass
class Scores:
    ssim: np.ndarray          # per private image, against its own original
    psnr: np.ndarray
    chance_ssim: float        # mean SSIM against a random other private image
    seconds: float
    recovered: np.ndarray | None = None   # (n, H, W, C) in [0, 1], in the originals' order
    matching: np.ndarray | None = None    # Hungarian matching: the recovery scored against each original
    purity: float | None = None           # Tier 2: mean cluster purity, and the same for random clusters
    chance_purity: float | None = None
    challenge: Challenge | None = None    # the challenge attacked (for `save_grid`)
    per_encoding: dict | None = None      # the InstaHide Challenge's metrics (`challenge_scores`)

    def summary(self) -> dict:
        summary: dict[str, float | None]
        summary = {"mean_ssim": float(self.ssim.mean()), "max_ssim": float(self.ssim.max()),
                   "fraction_above_0.5": float((self.ssim > 0.5).mean()),
                   "fraction_above_0.9": float((self.ssim > 0.9).mean()),
                   "mean_psnr": float(self.psnr.mean()), "chance_ssim": self.chance_ssim, "seconds": self.seconds}
        if self.purity is not None:
            summary.update(cluster_purity=self.purity, chance_purity=self.chance_purity)
        if self.per_encoding is not None:
            summary.update(self.per_encoding)
        return summary


def ssim_matrix(recovered: np.ndarray, originals: np.ndarray) -> np.ndarray:
    """SSIM of every recovery (a, H, W, C) against every original (b, H, W, C), both in [0, 1]:
    (a, b). Vectorized scikit-image defaults (7x7 uniform window, sample covariance, channel
    mean), for matching; the reported scores come from scikit-image itself."""
    y = np.asarray(originals, np.float64)
    return np.stack([ssim_pairs(np.broadcast_to(x, y.shape), y) for x in np.asarray(recovered, np.float64)])


def ssim_pairs(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """SSIM of x[i] against y[i] (both (n, H, W, C) in [0, 1]): scikit-image's defaults (7x7
    uniform window, sample covariance, mean over channels, the border left out), vectorized."""
    from scipy.ndimage import uniform_filter

    def local_mean(v):
        return uniform_filter(v, size=(1, 7, 7, 1), mode="reflect")

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    c1, c2, cov_norm = 0.01 ** 2, 0.03 ** 2, 49 / 48
    ux, uy = local_mean(x), local_mean(y)
    vx, vy = cov_norm * (local_mean(x * x) - ux * ux), cov_norm * (local_mean(y * y) - uy * uy)
    vxy = cov_norm * (local_mean(x * y) - ux * uy)
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
    return s[:, 3:-3, 3:-3, :].mean(axis=(1, 2, 3))  # scikit-image leaves out the border


def challenge_scores(decryptions: np.ndarray, members: np.ndarray, originals: np.ndarray) -> dict:
    """The InstaHide Challenge's metrics: the attacker outputs one image per encoding,
    `decryptions` (m, H, W, C) in [0, 1]; `members` (m, p) are the private images each encoding
    mixes (p = 2 in the challenge's cross 2+4). Max_SSIM: the mean over encodings of the best
    SSIM against the encoding's private images; Mean_SSIM: of their mean SSIM.

    L2: the challenge's rules define Max_L2 as the larger of the two L2 differences, its
    leaderboard reports Min_L2 (0.00 to 0.05) and neither says how the difference is scaled. We
    report `challenge_min_l2`, the difference to the closer private image, and
    `challenge_mean_l2`, the mean over both, as the mean squared difference per pixel value in
    [0, 1]: a scale on which the leaderboard's values fit (a Euclidean norm of a 32x32x3
    image would be in the tens), but not confirmed by the challenge's code."""
    truth = np.asarray(originals, np.float64) / 255
    ssims = np.stack([ssim_pairs(decryptions, truth[members[:, j]]) for j in range(members.shape[1])], axis=1)
    l2 = np.stack([((decryptions - truth[members[:, j]]) ** 2).mean(axis=(1, 2, 3))
                   for j in range(members.shape[1])], axis=1)
    return {"challenge_max_ssim": float(ssims.max(axis=1).mean()), "challenge_mean_ssim": float(ssims.mean()),
            "challenge_min_l2": float(l2.min(axis=1).mean()), "challenge_mean_l2": float(l2.mean())}


def match_recoveries(recovered: np.ndarray, originals: np.ndarray) -> np.ndarray:
    """Hungarian matching (scipy's linear_sum_assignment) of recoveries to originals, by SSIM:
    for each original, the index of its recovery (-1 where there are fewer recoveries)."""
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(-ssim_matrix(recovered, originals))
    matching = np.full(len(originals), -1)
    matching[cols] = rows
    return matching


def score(recovered: np.ndarray, originals: np.ndarray, seconds: float = 0.0, seed: int = 0,
          match: bool = False) -> Scores:
    """SSIM and PSNR (scikit-image) of recovered images (n, H, W, C) in [0, 1] against the
    originals (uint8), with the chance level. `match`: the recoveries come in no particular
    order (Tier 2); each original is scored against the recovery the Hungarian matching gives
    it (a gray image where there are fewer recoveries than originals)."""
    from skimage.metrics import structural_similarity

    truth = originals.astype(np.float64) / 255
    matching = None
    if match:
        matching = match_recoveries(recovered, truth)
        gray = np.full(truth.shape[1:], 0.5)
        recovered = np.stack([recovered[j] if j >= 0 else gray for j in matching])

    def ssim(x, y):
        return structural_similarity(x, y, data_range=1.0, channel_axis=-1)

    ssims = np.array([ssim(r, t) for r, t in zip(recovered, truth, strict=True)])
    # PSNR as scikit-image's (data range 1), capped at 150 dB where the recovery is exact
    psnrs = np.array([10 * np.log10(1 / max(np.mean((t - r) ** 2), 1e-15))
                      for r, t in zip(recovered, truth, strict=True)])
    other = np.random.default_rng(seed).permutation(len(truth))
    other = np.where(other == np.arange(len(truth)), (other + 1) % len(truth), other)
    chance = float(np.mean([ssim(truth[o], t) for o, t in zip(other, truth, strict=True)]))
    return Scores(ssims, psnrs, chance, seconds, recovered=np.asarray(recovered), matching=matching)


def cluster_purity(clusters: list[np.ndarray], members: np.ndarray) -> float:
    """Mean over clusters of the fraction of members that contain the cluster's most common
    private image (`members`: (m, private terms) ground truth in the clusters' row order)."""
    purities = []
    for c in clusters:
        if len(c) == 0:
            continue
        counts = np.bincount(members[c].reshape(-1))
        top = np.argmax(counts)
        purities.append(np.mean((members[c] == top).any(axis=1)))
    return float(np.mean(purities)) if purities else 0.0


def save_grid(path, scores: Scores, count: int = 8, zoom: int = 3) -> None:
    """A PNG of the first `count` private images: originals (top row), one encoding of each
    (|e|, each rescaled to [0, 1]; row i of the first epoch, which mixes image i), recoveries
    (bottom row, matched to the originals)."""
    from PIL import Image

    challenge = scores.challenge
    if challenge is None or scores.recovered is None:
        raise ValueError("save_grid needs the scores of run_known_mixing or run_encodings_only "
                         "(with the challenge and the recovered images)")
    count = min(count, len(challenge.images))
    originals = challenge.images[:count].astype(np.float64) / 255
    magnitudes = np.abs(challenge.encodings[:count].astype(np.float64)).transpose(0, 2, 3, 1)
    low = magnitudes.min(axis=(1, 2, 3), keepdims=True)
    high = magnitudes.max(axis=(1, 2, 3), keepdims=True)
    encodings = (magnitudes - low) / np.maximum(high - low, 1e-12)
    rows = [originals, encodings, scores.recovered[:count]]
    height, width, channels = originals.shape[1:]
    gap = 2
    canvas = np.ones((3 * height + 4 * gap, count * width + (count + 1) * gap, channels))
    for r, row in enumerate(rows):
        for i, image in enumerate(row):
            y, x = gap + r * (height + gap), gap + i * (width + gap)
            canvas[y:y + height, x:x + width] = image
    pixels = (np.clip(canvas, 0, 1) * 255).round().astype(np.uint8)
    if channels == 1:
        pixels = pixels[..., 0]
    image = Image.fromarray(pixels)
    image.resize((image.width * zoom, image.height * zoom), Image.Resampling.NEAREST).save(path)
