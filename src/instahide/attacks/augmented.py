"""Tier 2 against encodings made with crop and flip (`Encoder(pad=p, hflip=True)`): each term of
each encoding sees its image through its own window offset (dy, dx) in [-p, p] and flip bit,
which the attacker does not know (it knows p and hflip: the encoder's settings are public).
`run_encodings_only` assumes every term aligned and collapses (inside k=4, pad 2 + flip, T=50:
0 of 100 images). This module keeps its clustering and label steps (imported from
`encodings_only`) and changes two things:

(a) a flip-tolerant similarity (`symmetric_features`): blurred edge maps of |e| plus their
mirror image, so that a term and its flipped copy give the same feature, and the blur makes a
shift of a pixel or two cost little correlation. It stays a Gram matrix of unit rows, so the
explain-away step of `grow_clusters` still applies (the max over relative shifts and flips of
correlations is no Gram matrix; its explain-away overflowed, and its cluster purity was lower).
(b) a transform-aware reconstruction (`reconstruct_transformed`): images x (n, C, H, W) in
normalized units; encoding j's mixture m_j = sum_s w_js T_js(x_c) where T flips and shifts with
the pad's fill (-mean/std per channel). The windows are gathers of a padded image
(`transform_indices`), so the mixing operator A and its adjoint are a gather and an index_add
in torch; the M-step solves (A^T A + beta L) x = A^T (signed - fill part) by preconditioned
conjugate gradients; the E-step is `reconstruct_em`'s (signed = |e| tanh(|e| m / s^2)); every
few iterations each slot's window is chosen again among the (2p+1)^2 x 2 candidates by the
folded-normal likelihood (`retransform_by_likelihood`), and the images are re-centred (offsets
are drawn symmetric about 0, so their mean over an image's terms is 0). Windows start from
registering each member's edge map to its cluster's template (`register_windows`); x from the
power method on the cross terms of |e|^2 (`_cross_term_start`, the analogue of
`_spectral_start` with shifted terms).

Signs: with aligned terms |mixture| is blind to one sign per pixel and channel shared by all
images; with windows shifted differently per term that symmetry is gone (a sign pattern that
survives every relative shift is constant), so only one sign per channel is left (and the pad
fill breaks even that slightly): no pixel-sign synchronization is needed, only
`_align_channels` and the sign prior. What is left instead is the orientation: flip bits are
drawn with probability 1/2 and offsets symmetric, so x and its mirror image explain the
encodings equally, and no attacker can tell which one is the original. `run_augmented` scores
both (`orientations`)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..encoder import Encoder
from .challenge import make_challenge, private_members
from .encodings_only import (
    _apply_sign_prior,
    _default_public_images,
    assign_with_labels,
    edge_maps,
    fit_sign_prior,
    grow_clusters,
    publish,
    run_encodings_only,
    shared_class,
)
from .known_mixing import _to_pixels
from .metrics import Scores, challenge_scores, cluster_purity, score


def transform_indices(height: int, width: int, pad: int, hflip: bool):
    """The candidate windows: for each (dy, dx, flip) with dy, dx in [-pad, pad] (flip only with
    `hflip`), the flat index into the image padded by `pad` on every side that output pixel
    (y, x) reads: (y + dy, x' + dx) with x' = width - 1 - x when flipped (docs/algorithm.md,
    "Windows"). Returns (indices (K, H*W) int64, windows (K, 3) int: dy, dx, flip)."""
    windows = np.array([(dy, dx, f) for f in ((0, 1) if hflip else (0,))
                        for dy in range(-pad, pad + 1) for dx in range(-pad, pad + 1)])
    y, x = np.mgrid[:height, :width]
    padded_width = width + 2 * pad
    indices = np.stack([(y + dy + pad) * padded_width + (np.where(f, width - 1 - x, x) + dx + pad)
                        for dy, dx, f in windows]).reshape(len(windows), -1)
    return indices.astype(np.int64), windows


def window_ids(offsets: np.ndarray, flips: np.ndarray, pad: int, hflip: bool) -> np.ndarray:
    """The index into `transform_indices`' candidates of windows given as offsets (..., 2)
    (dy, dx) and flip bits (...) (ground truth from the keys, for measurements)."""
    side = 2 * pad + 1
    ids = (offsets[..., 0] + pad) * side + offsets[..., 1] + pad
    return ids + (side * side * flips.astype(np.int64) if hflip else 0)


class _Mixing:
    """The mixing operator of the transformed model as gathers of padded images: slot s of
    encoding j reads image ids[j, s] through window taus[j, s] with weight weights[j, s]
    (slots with id -1 are left out)."""

    def __init__(self, ids, weights, taus, n, shape, pad, hflip, fill):
        import torch

        self.n, (self.channels, self.height, self.width), self.pad = n, shape, pad
        self.padded = (self.height + 2 * pad) * (self.width + 2 * pad)
        indices, self.windows = transform_indices(self.height, self.width, pad, hflip)
        self.indices = torch.from_numpy(indices)
        self.fill = torch.as_tensor(np.asarray(fill, np.float32)).reshape(-1, 1, 1)
        self.update(ids, weights, taus)

    def update(self, ids, weights, taus):
        import torch

        self.ids, self.taus = np.asarray(ids), np.asarray(taus)
        used = self.ids >= 0
        self.w = torch.from_numpy(np.where(used, weights, 0).astype(np.float32))
        safe_ids = torch.from_numpy(np.where(used, self.ids, 0))
        safe_taus = torch.from_numpy(np.where(used, self.taus, 0))
        self.flat = safe_ids[:, :, None] * self.padded + self.indices[safe_taus]   # (m, slots, HW)

    def pad_images(self, x, fill: bool):
        """(n, C, H, W) -> (C, n * padded) with the border at the fill value (or 0)."""
        import torch

        p = self.pad
        out = torch.zeros(self.channels, self.n, self.height + 2 * p, self.width + 2 * p, dtype=x.dtype)
        if fill:
            out += self.fill[:, :, :, None]
        out[:, :, p:p + self.height, p:p + self.width] = x.transpose(0, 1)
        return out.reshape(self.channels, -1)

    def terms(self, x, fill: bool = True):
        """Each slot's windowed image (m, slots, C, HW), unweighted."""
        padded = self.pad_images(x, fill)
        return padded[:, self.flat].permute(1, 2, 0, 3)

    def forward(self, x, fill: bool = True):
        """The mixtures (m, C, HW)."""
        return (self.terms(x, fill) * self.w[:, :, None, None]).sum(dim=1)

    def adjoint(self, r, slot_weights=None):
        """A^T r for r (m, C, HW) (or (m, slots, C, HW) with `slot_weights` None meaning one per slot)."""
        import torch

        w = self.w if slot_weights is None else slot_weights
        per_slot = r[:, None] * w[:, :, None, None] if r.dim() == 3 else r * w[:, :, None, None]
        out = torch.zeros(self.channels, self.n * self.padded, dtype=r.dtype)
        out.index_add_(1, self.flat.reshape(-1), per_slot.permute(2, 0, 1, 3).reshape(self.channels, -1))
        p = self.pad
        out = out.reshape(self.channels, self.n, self.height + 2 * p, self.width + 2 * p)
        return out[:, :, p:p + self.height, p:p + self.width].transpose(0, 1).contiguous()


def _laplacian(x):
    """The grid Laplacian with Neumann boundaries, per image and channel (n, C, H, W)."""
    import torch

    out = torch.zeros_like(x)
    dy = x[:, :, 1:] - x[:, :, :-1]
    dx = x[:, :, :, 1:] - x[:, :, :, :-1]
    out[:, :, 1:] += dy
    out[:, :, :-1] -= dy
    out[:, :, :, 1:] += dx
    out[:, :, :, :-1] -= dx
    return out


def _solve(mixing: _Mixing, rhs, x0, beta: float, diagonal, steps: int):
    """Preconditioned conjugate gradients for (A^T A + beta L) x = rhs (Jacobi preconditioner:
    the diagonal of A^T A plus 4 beta), from x0."""
    def operator(v):
        return mixing.adjoint(mixing.forward(v, fill=False)) + beta * _laplacian(v)

    precondition = 1.0 / (diagonal + 4 * beta)
    x = x0.clone()
    r = rhs - operator(x)
    z = precondition * r
    p = z.clone()
    rz = (r * z).sum()
    for _ in range(steps):
        q = operator(p)
        alpha = rz / (p * q).sum().clamp_min(1e-30)
        x += alpha * p
        r -= alpha * q
        z = precondition * r
        rz_new = (r * z).sum()
        p = z + (rz_new / rz.clamp_min(1e-30)) * p
        rz = rz_new
    return x


def _noise(observed, mixture, floor):
    """Per encoding, the mean squared misfit of |e| by |m| (what the model does not explain:
    public patches, unassigned slots, wrong windows), floored. (m, 1, 1)."""
    return ((observed - mixture.abs()) ** 2).mean(dim=(1, 2), keepdim=True).clamp_min(floor)


def _cross_term_start(mixing: _Mixing, observed, iterations: int = 30, seed: int = 0):
    """Per channel, the images from the cross terms of |e|^2, as `_spectral_start` does with
    aligned terms: |e_j|^2 = sum_s w_s^2 T_s(x)^2 + sum_{s != t} w_s w_t T_s(x) T_t(x); the squares u
    are fitted by least squares (`_solve` with squared weights), and the matched filter of the
    residual over all pairs of slots, plus u on the diagonal, is near x x^T: its top eigenvector
    per channel (power method, operators as in `_Mixing`) starts the EM. Measured (inside k=4,
    pad 2 + flip, T=50, true clusters and windows): its correlation with the truth was ~0.005 per
    channel, i.e. no better than a random start, yet the EM from it reached mean SSIM 0.99; the
    start is kept as the place for a better one (suspect the squares' fit or the scale gamma)."""
    import torch

    squared = observed ** 2
    n = mixing.n
    shape = (n, mixing.channels, mixing.height, mixing.width)
    w, fill = mixing.w, mixing.fill
    mixing.w, mixing.fill = w ** 2, fill ** 2           # the squares' model: weights w^2, pad value fill^2
    diagonal = mixing.adjoint(torch.ones_like(squared), slot_weights=w ** 4)
    rhs = mixing.adjoint(squared - mixing.forward(torch.zeros(shape)))
    u = _solve(mixing, rhs, torch.zeros(shape), 0.1 * float(diagonal.mean()), diagonal, 20).clamp_min(0)
    residual = squared - mixing.forward(u)
    mixing.w, mixing.fill = w, fill
    w2 = (w ** 2).sum(dim=1)
    gamma = 2 * 2 * float((w2 ** 2 - (w ** 4).sum(dim=1)).sum()) / n  # mean row sum of the squared gains
    v = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    value = torch.ones(1, mixing.channels, 1, 1)
    for _ in range(iterations):
        weighted = mixing.terms(v, fill=False) * w[:, :, None, None]
        cross = 2 * residual[:, None] * (weighted.sum(dim=1, keepdim=True) - weighted)
        product = mixing.adjoint(cross) + gamma * u * v
        value = (product * v).sum(dim=(0, 2, 3), keepdim=True) / (v * v).sum(dim=(0, 2, 3), keepdim=True)
        v = product / product.square().sum(dim=(0, 2, 3), keepdim=True).sqrt()
    return v * (value.clamp_min(0) / max(gamma, 1e-12)).sqrt()


def retransform_by_likelihood(mixing: _Mixing, x, observed, noise, chunk: int = 32) -> np.ndarray:
    """Each slot's window chosen again, one slot at a time (the others fixed), among all
    candidates: the one under which |e| = |m + n| (folded normal, the fitted noise) is likeliest,
    as `reassign_by_likelihood` chooses clusters. Returns new window ids (m, slots)."""
    import torch

    taus = mixing.taus.copy()
    padded = mixing.pad_images(x, True).reshape(mixing.channels, mixing.n, -1)
    every = padded[:, :, mixing.indices].permute(1, 2, 0, 3)                 # (n, K, C, HW)
    inverse = 1.0 / noise
    for slot in range(taus.shape[1]):
        mixing.update(mixing.ids, mixing.w.numpy(), taus)
        mixture = mixing.forward(x)
        own = mixing.terms(x)[:, slot] * mixing.w[:, slot, None, None]
        for start in range(0, len(taus), chunk):
            rows = slice(start, start + chunk)
            ids = torch.from_numpy(np.maximum(mixing.ids[rows, slot], 0))
            trial = (mixture[rows] - own[rows])[:, None] + mixing.w[rows, slot, None, None, None] * every[ids]
            z = observed[rows, None] * trial * inverse[rows, None]
            ll = (z.abs() + torch.log1p(torch.exp(-2 * z.abs())) - 0.5 * trial ** 2 * inverse[rows, None]).sum(
                dim=(2, 3))
            pick = ll.argmax(dim=1).numpy()
            used = mixing.ids[rows, slot] >= 0
            taus[rows, slot] = np.where(used, pick, taus[rows, slot])
    return taus


def _recentre(mixing: _Mixing, x, taus):
    """Offsets are drawn symmetric about 0, so each image's mean offset over its terms is 0; an
    image whose windows average a shift of a pixel or more is shifted back (edge values
    replicated), and its windows with it."""
    import torch

    windows = mixing.windows
    side = 2 * mixing.pad + 1
    x = x.clone()
    taus = taus.copy()
    for c in range(mixing.n):
        where = mixing.ids == c
        if not where.any():
            continue
        dy, dx = np.round(windows[taus[where], :2].mean(axis=0)).astype(int)
        if dy == 0 and dx == 0:
            continue
        h, w = mixing.height, mixing.width
        ys = torch.from_numpy(np.clip(np.arange(h) + dy, 0, h - 1))
        xs = torch.from_numpy(np.clip(np.arange(w) + dx, 0, w - 1))
        x[c] = x[c][:, ys][:, :, xs]
        shifted = windows[taus[where]].copy()
        shifted[:, 0] = np.clip(shifted[:, 0] - dy, -mixing.pad, mixing.pad)
        shifted[:, 1] = np.clip(shifted[:, 1] - dx, -mixing.pad, mixing.pad)
        taus[where] = (shifted[:, 0] + mixing.pad) * side + shifted[:, 1] + mixing.pad + side * side * shifted[:, 2]
    return x, taus


def reconstruct_transformed(magnitudes: np.ndarray, ids: np.ndarray, weights: np.ndarray, taus: np.ndarray,
                            n_images: int, pad: int, hflip: bool, fill, iterations: int = 40,
                            smoothness: float = 0.1, retransform_every: int = 10, start=None, seed: int = 0):
    """(e) with windows: EM for images x (n, C, H, W) in normalized units whose windowed
    mixtures explain |e| (module docstring). `taus` (m, slots): each slot's starting window
    (index into `transform_indices`), re-chosen every `retransform_every` iterations (0: kept,
    e.g. the true windows for an upper bound); `fill` the pad's normalized value per channel.
    Measured, inside k=4, pad 2 + flip, T=50, 100 images, true clusters and coefficients: with the
    true windows kept (30 iterations) mean SSIM 0.99, 100 of 100 above 0.5; with windows from
    `register_windows` (4% of them right) re-chosen every 5 of 20 iterations, 100 of 100 above
    0.5 (mean 0.90) when each recovery may be mirrored, 51 when not (the orientation is a coin
    flip), about 320 s on one thread. So the solver and the window search work; the clustering
    is what fails (`run_augmented`).
    Returns (x (n, C, H, W) float32 numpy, windows (m, slots), noise (m, 1, 1))."""
    import torch

    m, channels, height, width = magnitudes.shape
    observed = torch.from_numpy(magnitudes.reshape(m, channels, -1).astype(np.float32))
    mixing = _Mixing(ids, weights, taus, n_images, (channels, height, width), pad, hflip, fill)
    shape = (n_images, channels, height, width)
    floor = 1e-3 * float((observed ** 2).mean())
    x = _cross_term_start(mixing, observed, seed=seed) if start is None else torch.as_tensor(start).float()
    taus = np.asarray(taus).copy()
    for iteration in range(iterations):
        mixture = mixing.forward(x)
        noise = _noise(observed, mixture, floor)
        signed = observed * torch.tanh(observed * mixture / noise)
        diagonal = mixing.adjoint(torch.ones_like(observed), slot_weights=mixing.w ** 2)
        beta = smoothness * float(diagonal.mean())
        rhs = mixing.adjoint(signed - mixing.forward(torch.zeros(shape)))
        x = _solve(mixing, rhs, x, beta, diagonal, steps=5)
        if retransform_every and iteration % retransform_every == retransform_every - 1 and iteration < iterations - 5:
            noise = _noise(observed, mixing.forward(x), floor)
            taus = retransform_by_likelihood(mixing, x, observed, noise)
            x, taus = _recentre(mixing, x, taus)
            mixing.update(mixing.ids, mixing.w.numpy(), taus)
    noise = _noise(observed, mixing.forward(x), floor)
    return x.numpy().reshape(shape), taus, noise.numpy()


def symmetric_features(magnitudes: np.ndarray, sigma: float = 1.5, factor: int = 2) -> np.ndarray:
    """(a) Flip- and shift-tolerant similarity features: the gray edge map of |e|, blurred
    (`sigma`) and block-averaged (`factor`), plus its mirror image, as unit rows. A term and its
    flipped copy give the same feature; a shift of a pixel or two moves little of the blurred
    map. Measured on inside k=4, pad 2 + flip, T=50, 100 images (cluster purity after the
    label assignment): plain edge maps 0.30, max over relative flips and shifts 0.11-0.25 (and
    no Gram matrix), these 0.34."""
    from scipy.ndimage import gaussian_filter

    edges = gaussian_filter(edge_maps(magnitudes).sum(axis=1), (0, sigma, sigma))
    edges = edges + edges[:, :, ::-1]
    m, height, width = edges.shape
    edges = edges[:, :height // factor * factor, :width // factor * factor].reshape(
        m, height // factor, factor, width // factor, factor).mean(axis=(2, 4)).reshape(m, -1)
    edges = edges - edges.mean(axis=1, keepdims=True)
    return (edges / np.maximum(np.linalg.norm(edges, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def register_windows(magnitudes: np.ndarray, ids: np.ndarray, n_clusters: int, pad: int, hflip: bool,
                     sigma: float = 1.0) -> np.ndarray:
    """The starting windows: each slot's blurred gray edge map of |e| registered (best
    correlation over relative windows, shifts up to 2 pad) to the first member of its cluster;
    the windows relative to that member are then centred (offsets average 0 over an image's
    terms) and clipped to [-pad, pad]. Weak: with the true clusters 4% of the windows and 59% of
    the relative flips came out right (one noisy reference); the EM's window search does the
    real work. Returns window ids (m, slots) for `transform_indices`."""
    from scipy.ndimage import gaussian_filter

    m, _, height, width = magnitudes.shape
    edges = gaussian_filter(edge_maps(magnitudes).sum(axis=1), (0, sigma, sigma)).reshape(m, -1)
    edges = edges - edges.mean(axis=1, keepdims=True)
    edges /= np.maximum(np.linalg.norm(edges, axis=1, keepdims=True), 1e-12)
    wide = 2 * pad
    indices, windows = transform_indices(height, width, wide, hflip)
    side = 2 * pad + 1
    taus = np.zeros(ids.shape, np.int64)
    for c in range(n_clusters):
        rows, slots = np.nonzero(ids == c)
        if rows.size == 0:
            continue
        reference = np.zeros((height + 2 * wide) * (width + 2 * wide), np.float32)
        reference.reshape(height + 2 * wide, -1)[wide:wide + height, wide:wide + width] = \
            edges[rows[0]].reshape(height, width)
        best = np.argmax(edges[rows] @ reference[indices].T, axis=1)
        chosen = windows[best].copy()
        chosen[:, :2] -= np.round(chosen[:, :2].mean(axis=0)).astype(int)
        chosen[:, :2] = np.clip(chosen[:, :2], -pad, pad)
        taus[rows, slots] = (chosen[:, 0] + pad) * side + chosen[:, 1] + pad + side * side * chosen[:, 2]
    return taus


@dataclass
class AugmentedRecovery:
    recovered: np.ndarray      # (clusters, H, W, C) in [0, 1], in no particular order (nor orientation)
    clusters: list
    assigned: list
    ids: np.ndarray
    weights: np.ndarray
    windows: np.ndarray        # (m, slots) window ids (`transform_indices`) of each slot


def recover_augmented(magnitudes: np.ndarray, labels: np.ndarray, n_images: int, private_terms: int, pad: int,
                      hflip: bool, mean, std, iterations: int = 20, sign_prior=None) -> AugmentedRecovery:
    """Tier 2 with windows: `symmetric_features`, `grow_clusters` with the label gate,
    `assign_with_labels`, `register_windows`, `reconstruct_transformed`, then the channel and
    global signs (`_apply_sign_prior`)."""
    features = symmetric_features(magnitudes)
    similarity = features @ features.T
    encodings_per_image = len(magnitudes) // n_images
    clusters = grow_clusters(similarity, n_images, private_terms * encodings_per_image,
                             compatible=shared_class(labels))
    ids, weights, _ = assign_with_labels(similarity, clusters, labels, core=max(encodings_per_image, 2))
    taus = register_windows(magnitudes, ids, len(clusters), pad, hflip)
    fill = -np.asarray(mean, np.float64) / np.asarray(std, np.float64)
    solved, taus, _ = reconstruct_transformed(magnitudes, ids, weights, taus, len(clusters), pad, hflip, fill,
                                              iterations=iterations, retransform_every=5)
    recovered = _to_pixels(_apply_sign_prior(solved, std, sign_prior), mean, std)
    assigned = [np.flatnonzero((ids == c).any(axis=1)) for c in range(len(clusters))]
    return AugmentedRecovery(recovered, clusters, assigned, ids, weights, taus)


def run_augmented(images, labels, encoder: Encoder, encodings_per_image: int, rounds: int = 2, seed: int = 0,
                  orientations: str = "both", iterations: int = 20) -> Scores:
    """Tier 2 end to end against crop + flip, scored as `run_encodings_only` (Hungarian
    matching, cluster purity and its chance level, the challenge's per-encoding metrics).
    Without windows (pad 0, no flip) it is `run_encodings_only`. `orientations`: "both" offers
    the matching each recovery and its mirror image (no attacker can tell them apart, module
    docstring), "one" only the recovery as reconstructed. `rounds` is kept for the signature of
    `run_encodings_only` (cluster reassignment with windows is not done yet)."""
    if not encoder.pad and not encoder.hflip:
        return run_encodings_only(images, labels, encoder, encodings_per_image, rounds=rounds, seed=seed)
    if orientations not in ("both", "one"):
        raise ValueError(f"orientations must be 'both' or 'one', got {orientations!r}")
    challenge = make_challenge(images, labels, encoder, encodings_per_image)
    publication = publish(challenge, seed)
    start = time.perf_counter()
    public_images = _default_public_images(encoder, images.shape[1], seed)
    sign_prior = None if public_images is None else fit_sign_prior(public_images, challenge.mean, challenge.std)
    recovery = recover_augmented(publication.magnitudes, publication.labels, len(images), encoder.private_terms,
                                 encoder.pad, encoder.hflip, challenge.mean, challenge.std, iterations, sign_prior)
    seconds = time.perf_counter() - start
    offered = recovery.recovered
    if orientations == "both":
        offered = np.concatenate([offered, offered[:, :, ::-1]])
    scores = score(offered, challenge.images, seconds, seed=seed, match=True)
    members = private_members(challenge.keys)[publication.order]
    scores.purity = cluster_purity(recovery.assigned, members)
    slot = np.argmax(recovery.weights, axis=1)
    cluster = recovery.ids[np.arange(len(slot)), slot]
    gray = np.full((1, *recovery.recovered.shape[1:]), 0.5)
    # one image per encoding: its largest term's recovery, seen through that term's flip
    flipped = np.take_along_axis(recovery.windows, slot[:, None], 1)[:, 0] >= (2 * encoder.pad + 1) ** 2
    decryptions = np.concatenate([recovery.recovered, gray])[np.where(cluster >= 0, cluster, len(recovery.recovered))]
    decryptions = np.where(flipped[:, None, None, None], decryptions[:, :, ::-1], decryptions)
    scores.per_encoding = challenge_scores(decryptions, members, challenge.images)
    rng = np.random.default_rng(seed)
    scores.chance_purity = cluster_purity([rng.choice(len(members), len(c), replace=False) for c in recovery.assigned
                                           if len(c)], members)
    scores.challenge = challenge
    return scores


def run_known_windows(images, labels, encoder: Encoder, encodings_per_image: int, iterations: int = 30,
                      seed: int = 0) -> Scores:
    """Tier 1 on encodings with crop and flip, inside mode: the attacker knows every encoding's
    images, coefficients and windows (the whole mixing map, not the signs), and
    `reconstruct_transformed` solves for the images with the windows kept. With the windows
    known, the mirror ambiguity of Tier 2 is gone: recoveries are scored as they come out. The
    one sign per channel left is chosen as Tier 2 chooses it (`_apply_sign_prior`)."""
    if encoder.public is not None:
        raise ValueError("run_known_windows handles inside mode (cross mode with windows is not implemented)")
    challenge = make_challenge(images, labels, encoder, encodings_per_image)
    start = time.perf_counter()
    ids = np.concatenate([k.index for k in challenge.keys])
    weights = np.concatenate([k.lam for k in challenge.keys]).astype(np.float32)
    taus = np.concatenate([window_ids(k.offset, k.flip, encoder.pad, encoder.hflip) for k in challenge.keys])
    fill = -np.asarray(challenge.mean, np.float64) / np.asarray(challenge.std, np.float64)
    solved, _, _ = reconstruct_transformed(np.abs(challenge.encodings), ids, weights, taus, len(images), encoder.pad,
                                           encoder.hflip, fill, iterations=iterations, retransform_every=0, seed=seed)
    public_images = _default_public_images(encoder, images.shape[1], seed)
    sign_prior = None if public_images is None else fit_sign_prior(public_images, challenge.mean, challenge.std)
    recovered = _to_pixels(_apply_sign_prior(solved, challenge.std, sign_prior), challenge.mean, challenge.std)
    scores = score(recovered, challenge.images, time.perf_counter() - start, seed=seed)
    # one image per encoding, as Tier 1 without windows: the recovery of its largest term (in the
    # original's orientation: the challenge scores against the private images, not their windows)
    members = private_members(challenge.keys)
    decryptions = recovered[ids[np.arange(len(ids)), np.argmax(weights, axis=1)]]
    scores.per_encoding = challenge_scores(decryptions, members, challenge.images)
    scores.challenge = challenge
    return scores
