"""Tier 2 (`recover_encodings_only`, `run_encodings_only`): the attacker sees only |encodings|
(the sign flip hides nothing else) and the released soft labels (`publish`), as in Carlini et
al. (IEEE S&P 2021): (a) a similarity between encodings, hand-made (`handmade_features`) or
(b) a small network trained on encodings the attacker makes from public data
(`train_similarity_network`), (c) greedy cluster growth (`grow_clusters`), (d) assignment of
encodings to clusters with the labels (`assign_with_labels`), (e) reconstruction by EM under
a noise model of what the clusters do not explain (`reconstruct_em`), and (d') reassignment of
each encoding's slots by likelihood under the recovered images (`reassign_by_likelihood`),
alternating with (e). Parts (b), (d') and (e) need torch."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..encoder import Encoder
from .challenge import Challenge, make_challenge, private_members
from .known_mixing import _align_channels, _sign_by_sky, _to_pixels
from .metrics import Scores, challenge_scores, cluster_purity, score

if TYPE_CHECKING:
    import torch


@dataclass
class Publication:
    """What the Tier 2 attacker sees."""
    magnitudes: np.ndarray  # (m, C, H, W) |encodings|: the sign flip hides only the signs
    labels: np.ndarray      # (m, K) the released soft labels
    order: np.ndarray       # challenge row of each published encoding (ground truth, for scoring only)


def publish(challenge: Challenge, seed: int = 0) -> Publication:
    """|encodings| and labels in a random order: published in dataset order, row i of every
    epoch would name its first image, i."""
    order = np.random.default_rng(seed).permutation(len(challenge.encodings))
    return Publication(np.abs(challenge.encodings[order]).astype(np.float32), challenge.labels[order], order)


def edge_maps(magnitudes: np.ndarray) -> np.ndarray:
    """Gradient magnitude of each channel of |e| (m, C, H, W): where |e| keeps the sign of its
    mixture, its edges are the edges of the images mixed with large weights."""
    dy = np.zeros_like(magnitudes)
    dx = np.zeros_like(magnitudes)
    dy[:, :, :-1] = np.diff(magnitudes, axis=2)
    dx[:, :, :, :-1] = np.diff(magnitudes, axis=3)
    return np.sqrt(dx * dx + dy * dy)


def _unit_rows(features: np.ndarray) -> np.ndarray:
    """Rows centred and scaled to norm 1: their dot products are correlations."""
    features = features.reshape(len(features), -1).astype(np.float32)
    features = features - features.mean(axis=1, keepdims=True)
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def handmade_features(magnitudes: np.ndarray) -> np.ndarray:
    """(a) Hand-made similarity features: the correlation of two encodings' edge maps is their
    similarity (better than the correlation of |e| itself in our measurements)."""
    return _unit_rows(edge_maps(magnitudes))


def _network_inputs(magnitudes: np.ndarray, kind: str):
    import torch

    if kind == "projection":
        return torch.from_numpy(handmade_features(magnitudes))
    return torch.from_numpy(np.concatenate([magnitudes, edge_maps(magnitudes)], axis=1).astype(np.float32))


def similarity_network(kind: str = "projection", channels: int = 3, size: int = 32, embedding: int = 384):
    """A small network whose unit embeddings' cosine scores whether two encodings share a
    private image.

    "projection": one linear layer on the hand-made features (unit edge maps), started as a
    random orthogonal projection, which keeps their cosines roughly (so training starts from
    the hand-made similarity); it trains thousands of steps in minutes on a CPU.
    "cnn": a small strided CNN on |e| and its edge maps (in our CPU measurements it trained
    too few steps in minutes to match the hand-made score)."""
    import torch
    from torch import nn

    class Embedding(nn.Module):
        def __init__(self):
            super().__init__()
            self.kind = kind
            if kind == "projection":
                self.body = nn.Linear(channels * size * size, embedding, bias=False)
                nn.init.orthogonal_(self.body.weight)
            elif kind == "cnn":
                self.body = nn.Sequential(  # strided from the start: it must train in minutes on a CPU
                    nn.Conv2d(2 * channels, 32, 3, padding=1, stride=2), nn.ReLU(),
                    nn.Conv2d(32, 64, 3, padding=1, stride=2), nn.ReLU(),
                    nn.Conv2d(64, 64, 3, padding=1, stride=2), nn.ReLU(), nn.Flatten(),
                    nn.Linear(64 * (size // 8) ** 2, embedding))
            else:
                raise ValueError(f"kind must be 'projection' or 'cnn', got {kind!r}")
            self.scale = nn.Parameter(torch.tensor(10.0))
            self.bias = nn.Parameter(torch.tensor(-2.0))

        def forward(self, inputs):
            return nn.functional.normalize(self.body(inputs), dim=1)

    return Embedding()


def attacker_encoder(encoder: Encoder) -> Encoder:
    """An encoder with the victim's settings (the algorithm and its settings are public) and
    the attacker's own secret key."""
    return Encoder(k=encoder.k, upper=encoder.upper, sign=encoder.sign, mean=encoder.mean, std=encoder.std,
                   pad=encoder.pad, hflip=encoder.hflip, distinct=encoder.distinct,
                   private_terms=encoder.private_terms if encoder.public is not None else None,
                   public=encoder.public, patch_size=encoder.patch_size, dom=encoder.dom)


def train_similarity_network(public_images: np.ndarray, encoder: Encoder, seconds: float = 90.0,
                             encodings_per_image: int = 16, batch_images: int = 32, encodings_per_batch_image: int = 8,
                             kind: str = "projection", learning_rate: float = 1e-3, seed: int = 0):
    """(b) Trains `similarity_network` on encodings the attacker makes itself: `public_images`
    (N, H, W, C) uint8 encoded with `attacker_encoder(encoder)`, so the attacker knows which
    pairs share a private image. Each batch takes a few encodings of each of a few images, so
    that sharing pairs are common; loss: logistic on scale * cosine + bias, classes balanced.
    Stops after `seconds`."""
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    own = make_challenge(public_images, np.zeros(len(public_images), np.int64), attacker_encoder(encoder),
                         encodings_per_image)
    members = torch.from_numpy(private_members(own.keys))
    _, channels, size, _ = own.encodings.shape
    inputs = _network_inputs(np.abs(own.encodings), kind)
    encodings_of = [np.flatnonzero((members.numpy() == i).any(axis=1)) for i in range(len(public_images))]
    network = similarity_network(kind, channels, size)
    optimizer = torch.optim.Adam(network.parameters(), lr=learning_rate)
    start, steps = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        chosen = rng.choice(len(public_images), batch_images, replace=False)
        rows = np.unique(np.concatenate([rng.choice(encodings_of[i], encodings_per_batch_image) for i in chosen]))
        batch = members[rows]
        share = (batch[:, None, :, None] == batch[None, :, None, :]).flatten(2).any(dim=2).float()
        off_diagonal = ~torch.eye(len(rows), dtype=torch.bool)
        z = network(inputs[rows])
        logits = network.scale * (z @ z.T) + network.bias
        positives = share[off_diagonal].mean().clamp(1e-3, 1 - 1e-3)
        weights = torch.where(share > 0, 0.5 / positives, 0.5 / (1 - positives))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits[off_diagonal], share[off_diagonal],
                                                                    weight=weights[off_diagonal])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        steps += 1
    network.eval()
    network.training_steps = steps
    return network


def network_features(network, magnitudes: np.ndarray, batch: int = 512) -> np.ndarray:
    """Unit embeddings of |encodings| (m, C, H, W) by a trained `similarity_network`."""
    import torch

    inputs = _network_inputs(magnitudes, network.kind)
    with torch.no_grad():
        return torch.cat([network(inputs[i:i + batch]) for i in range(0, len(inputs), batch)]).numpy()


def grow_clusters(similarity: np.ndarray, n_clusters: int, cluster_size: int, core: int | None = None,
                  max_overlap: float = 0.5, explain_away: bool = True,
                  compatible: np.ndarray | None = None) -> list[np.ndarray]:
    """(c) Greedy cluster growth on `similarity` (m, m), the Gram matrix of unit feature rows:
    from a seed encoding, repeatedly add the encoding with the highest mean similarity to the
    cluster so far, up to `cluster_size` (the encodings that contain one private image:
    private terms x T). Seeds are encodings that the fewest clusters hold, the one with the
    most similar neighbour first. A cluster that repeats one found before (overlap above
    `max_overlap`) is dropped.

    `explain_away`: once a cluster is found, the direction of its `core` (its first, surest
    members) is projected out of every feature row (a rank-one update of the Gram matrix), so
    that the images found no longer dominate the similarity and weaker images can seed
    clusters; without it the growth keeps returning to the same strong images.

    `compatible` (m, m) bool: pairs that may share an image (`shared_class`); the others score
    -1, the least similar.
    Members come in the order they joined."""
    m = len(similarity)
    core = core or max(cluster_size // 4, 2)
    gram = similarity.astype(np.float64, copy=True)
    covered = np.zeros(m, np.int64)
    tried = np.zeros(m, bool)
    clusters: list[np.ndarray] = []
    normalized = None
    while len(clusters) < n_clusters and not tried.all():
        if normalized is None:
            norms = np.sqrt(np.maximum(np.diag(gram), 1e-12))
            normalized = (gram / norms[:, None] / norms[None, :]).astype(np.float32)
            if compatible is not None:
                normalized[~compatible] = -1.0
            np.fill_diagonal(normalized, -np.inf)
            strength = normalized.max(axis=1)
        untried = np.flatnonzero(~tried)
        candidates = untried[covered[untried] == covered[untried].min()]
        seed = candidates[np.argmax(strength[candidates])]
        tried[seed] = True
        members = _grow(normalized, seed, cluster_size)
        if any(np.intersect1d(members, c).size > max_overlap * cluster_size for c in clusters):
            continue
        clusters.append(members)
        covered[members] += 1
        if explain_away:
            surest = members[:core]
            direction = gram[:, surest].sum(axis=1) / np.sqrt(max(gram[np.ix_(surest, surest)].sum(), 1e-12))
            gram -= np.outer(direction, direction)
            normalized = None
    return clusters


def shared_class(labels: np.ndarray, present: float = 1e-6) -> np.ndarray:
    """(m, m) bool: whether two soft labels hold a class in common. Two encodings of one
    private image both carry its class, so pairs without one share no image: in cross 2+4 this
    rules out about two thirds of the pairs before any similarity is computed."""
    held = (labels > present).astype(np.float32)
    return (held @ held.T) > 0


def _grow(similarity: np.ndarray, seed: int, size: int) -> np.ndarray:
    members = [seed]
    total = similarity[seed].astype(np.float64)
    total[seed] = -np.inf
    for _ in range(size - 1):
        best = int(np.argmax(total))
        members.append(best)
        total += similarity[best]
        total[members] = -np.inf
    return np.array(members)


def assign_with_labels(similarity: np.ndarray, clusters: list[np.ndarray], labels: np.ndarray, core: int,
                       present: float = 1e-6):
    """(d) Every encoding of a private image carries that image's class in its soft label, so a
    cluster's class is the class most of its members' labels contain. Each encoding then joins,
    for every class in its label, the cluster of that class it is most similar to (mean
    similarity to the cluster's `core`: its first, surest members), weighted by the label's
    value for that class (the private coefficient, when one image of the class is mixed).
    Returns (cluster ids (m, slots), -1 where unused; weights (m, slots); cluster classes)."""
    has_class = labels > present
    classes = np.array([np.argmax(has_class[c].sum(axis=0)) for c in clusters])
    affinity = np.stack([similarity[:, c[:core]].mean(axis=1) for c in clusters], axis=1)
    slots = int(has_class.sum(axis=1).max())
    ids = np.full((len(labels), slots), -1)
    weights = np.zeros((len(labels), slots), np.float32)
    for j in range(len(labels)):
        for slot, label_class in enumerate(np.flatnonzero(has_class[j])):
            same_class = np.flatnonzero(classes == label_class)
            if same_class.size:
                ids[j, slot] = same_class[np.argmax(affinity[j, same_class])]
                weights[j, slot] = labels[j, label_class]
    return ids, weights, classes


def mixing_estimate(ids: np.ndarray, weights: np.ndarray, n_clusters: int) -> np.ndarray:
    """The mixing matrix (m, clusters) the assignment implies."""
    a = np.zeros((len(ids), n_clusters))
    used = ids >= 0
    np.add.at(a, (np.nonzero(used)[0], ids[used]), weights[used])
    return a


def _noise_model(squared: torch.Tensor, ids: np.ndarray, weights: np.ndarray, n_clusters: int,
                 other_share: np.ndarray):
    """Least squares of |e|^2 on the clusters' squared weights, the squared share of the terms no
    cluster explains (public patches, unassigned slots) and a constant, for all pixels at once:
    E|e|^2 = sum_s w_s^2 x_s^2 + (cross terms) + noise energy. Returns the squares u (n, P),
    the fitted noise variance (m, P) and the residual (m, P), whose cross terms 2 w_s w_t x_s x_t
    carry the signs."""
    import torch

    m = len(ids)
    # a share column only where some encoding has a share worth fitting: label sums off 1 by
    # float rounding (inside mode) would get a huge coefficient and a meaningless noise
    share_column = bool((other_share > 1e-3).any())
    design = torch.zeros(m, n_clusters + 1 + share_column, dtype=torch.float64)
    used = ids >= 0
    rows, slots = np.nonzero(used)
    design.index_put_((torch.from_numpy(rows), torch.from_numpy(ids[used])),
                      torch.from_numpy(weights[used].astype(np.float64) ** 2), accumulate=True)
    design[:, n_clusters] = 1.0
    if share_column:
        design[:, n_clusters + 1] = torch.from_numpy(other_share.astype(np.float64) ** 2)
    coefficients = torch.linalg.lstsq(design, squared).solution
    noise = (design[:, n_clusters:] @ coefficients[n_clusters:]).clamp_min(1e-3 * float(squared.mean()))
    return coefficients[:n_clusters].clamp_min(0.0), noise, squared - design @ coefficients


def _spectral_start(residual: torch.Tensor, squares: torch.Tensor, ids: np.ndarray, weights: np.ndarray,
                    n_clusters: int, chunk: int = 256) -> torch.Tensor:
    """Per pixel, the images up to one sign from the cross terms: each pair of clusters mixed in
    an encoding gives a noisy 2 w_s w_t x_s x_t; the matched-filter sum of these over the
    encodings, with the squares u on the diagonal, is near rank one, x x^T (masked and
    weighted), and its top eigenvector is the start of the EM. (n, P) float64."""
    import torch

    n, pixels = n_clusters, residual.shape[1]
    firsts, seconds, gains = [], [], []
    for s in range(ids.shape[1]):
        for t in range(s + 1, ids.shape[1]):
            pair = (ids[:, s] >= 0) & (ids[:, t] >= 0) & (ids[:, s] != ids[:, t])
            firsts.append(np.flatnonzero(pair))
            seconds.append((ids[pair, s], ids[pair, t]))
            gains.append(2.0 * weights[pair, s].astype(np.float64) * weights[pair, t])
    rows = torch.from_numpy(np.concatenate(firsts))
    a = torch.from_numpy(np.concatenate([p[0] for p in seconds]))
    b = torch.from_numpy(np.concatenate([p[1] for p in seconds]))
    gain = torch.from_numpy(np.concatenate(gains))
    diagonal_scale = 2.0 * float((gain ** 2).sum()) / n  # mean row sum of the squared gains
    start = torch.empty(n, pixels, dtype=torch.float64)
    for p0 in range(0, pixels, chunk):
        p1 = min(p0 + chunk, pixels)
        matrix = torch.zeros(n * n, p1 - p0, dtype=torch.float64)
        terms = residual[rows, p0:p1] * gain[:, None]
        matrix.index_add_(0, a * n + b, terms)
        matrix.index_add_(0, b * n + a, terms)
        matrix = matrix.T.reshape(p1 - p0, n, n) + torch.diag_embed(squares[:, p0:p1].T * diagonal_scale)
        values, vectors = torch.linalg.eigh(matrix)
        start[:, p0:p1] = (vectors[:, :, -1] * values[:, -1:].clamp_min(0.0).sqrt()).T
    return start


def _synchronize_pixel_signs(solved: np.ndarray, width: int, sweeps: int = 10) -> np.ndarray:
    """|mixture| is blind to one sign per pixel and channel, shared by all images (x[:, c, p] and
    -x[:, c, p] explain the encodings equally). Neighbouring pixels of photos correlate, so the
    signs s maximize sum over neighbour pairs of s_p s_q corr(x_p, x_q) (4-neighbours within a
    channel, and the channels of one pixel): Z2 synchronization, solved by the top eigenvector
    of the correlation graph and a few sweeps of local improvement. (Greedy raster-order
    alignment lets one bad pixel flip the rest of its row and column: blocky, patch-wise sign
    errors.) (n, C, H*W) -> the same, with one global sign left."""
    import scipy.sparse
    from scipy.sparse.linalg import eigsh

    n, channels, pixels = solved.shape
    height = pixels // width
    flat = solved.reshape(n, channels * pixels)
    unit = flat / (np.linalg.norm(flat, axis=0) + 1e-12)
    node = np.arange(channels * pixels).reshape(channels, height, width)
    pairs = [(node[:, :, :-1], node[:, :, 1:]), (node[:, :-1, :], node[:, 1:, :])]
    pairs += [(node[0], node[c]) for c in range(1, channels)]
    first = np.concatenate([p.ravel() for p, _ in pairs])
    second = np.concatenate([q.ravel() for _, q in pairs])
    weight = np.einsum("ij,ij->j", unit[:, first], unit[:, second])
    graph = scipy.sparse.coo_matrix((np.concatenate([weight, weight]),
                                     (np.concatenate([first, second]), np.concatenate([second, first]))),
                                    shape=(flat.shape[1],) * 2).tocsr()
    vector = eigsh(graph, k=1, which="LA", v0=np.ones(flat.shape[1]))[1][:, 0]
    signs = np.where(vector < 0, -1.0, 1.0)
    for _ in range(sweeps):
        field = graph @ signs
        signs = np.where(field < 0, -1.0, np.where(field > 0, 1.0, signs))
    return (flat * signs).reshape(n, channels, pixels)


def _smooth_least_squares(mixing: np.ndarray, height: int, width: int, smoothness: float):
    """x = argmin ||A x - b||^2 + beta sum over neighbour pixels ||x_p - x_q||^2 for every
    image and channel at once, exactly: A^T A and the grid Laplacian act on different axes of
    x (n, C, H, W), so in the eigenbasis of A^T A and the cosine basis of the Laplacian
    (Neumann boundaries: the DCT-II) the system is diagonal. beta = smoothness x the mean
    eigenvalue of A^T A. Returns solve(A^T b) for right-hand sides (n, C, H, W)."""
    from scipy.fft import dctn, idctn

    values, basis = np.linalg.eigh(mixing.T @ mixing)
    laplacian = ((2 - 2 * np.cos(np.pi * np.arange(height) / height))[:, None]
                 + (2 - 2 * np.cos(np.pi * np.arange(width) / width))[None, :])
    scale = max(float(values.mean()), 1e-12)
    denominator = np.maximum(values, 0)[:, None, None] + smoothness * scale * laplacian[None] + 1e-9 * scale

    def solve(rhs: np.ndarray) -> np.ndarray:
        z = dctn(np.einsum("ji,jchw->ichw", basis, rhs), axes=(2, 3), norm="ortho")
        return np.einsum("ij,jchw->ichw", basis, idctn(z / denominator[:, None], axes=(2, 3), norm="ortho"))

    return solve


def reconstruct_em(magnitudes: np.ndarray, ids: np.ndarray, weights: np.ndarray, n_clusters: int,
                   other_share: np.ndarray | None = None, iterations: int = 40, smoothness: float = 0.1):
    """(e) The images x (normalized units) whose mixtures m_j = sum_slots weights[j] x[ids[j]]
    explain |e_j| = |m_j + n_j|, where n_j is what no cluster explains (the public patches of
    cross mode, the terms of unassigned slots), modelled per encoding and pixel as Gaussian
    noise whose variance is fitted from |e|^2 (`other_share`: each encoding's weight outside
    the clusters, e.g. 1 - the sum of its soft label; default 1 - sum(weights)).

    Start: the spectral estimate from the cross terms of |e|^2 (`_spectral_start`). Then EM:
    the signed mixture's posterior mean given |e| and the current x is |e| tanh(|e| m / s^2);
    x is its least-squares fit. Without noise this is alternating sign retrieval; with it,
    uncertain signs weigh less instead of being guessed (cross 2+4 with the private mixing
    known and the public patches left to the noise: the reconstruct_em row of
    benchmarks/results/privacy/tier1.json). One
    sign per pixel and channel is left (`_synchronize_pixel_signs`) and one for the set.
    Returns (normalized (n, C, H, W), noise variance (m, C*H*W))."""
    import torch

    m, channels, height, width = magnitudes.shape
    if other_share is None:
        other_share = 1.0 - weights.sum(axis=1)
    other_share = np.clip(other_share + np.where(ids < 0, weights, 0).sum(axis=1), 0.0, 1.0)
    observed = torch.from_numpy(magnitudes.reshape(m, -1).astype(np.float64))
    squares, noise, residual = _noise_model(observed ** 2, ids, weights, n_clusters, other_share)
    start = _spectral_start(residual, squares, ids, weights, n_clusters).numpy()
    del residual, squares
    x = _synchronize_pixel_signs(start.reshape(n_clusters, channels, height * width), width).reshape(n_clusters, -1)
    mixing = mixing_estimate(ids, weights, n_clusters)
    solve = _smooth_least_squares(mixing, height, width, smoothness)
    observed_np, noise_np = observed.numpy(), noise.numpy()
    for iteration in range(iterations):
        signed = observed_np * np.tanh(observed_np * (mixing @ x) / noise_np)
        x = solve((mixing.T @ signed).reshape(n_clusters, channels, height, width)).reshape(n_clusters, -1)
        if iteration % 10 == 9 or iteration == iterations - 1:  # a pixel may have settled on its flipped solution
            x = _synchronize_pixel_signs(x.reshape(n_clusters, channels, -1), width).reshape(n_clusters, -1)
    return x.reshape(n_clusters, channels, height, width), noise_np


def _slot_classes(labels: np.ndarray, slots: int, present: float = 1e-6) -> np.ndarray:
    """The class of each label slot (m, slots), -1 where unused: slots follow the classes a
    soft label holds, in class order (as `assign_with_labels` fills them)."""
    classes = np.full((len(labels), slots), -1)
    for j, row in enumerate(labels > present):
        held = np.flatnonzero(row)[:slots]
        classes[j, :len(held)] = held
    return classes


def reassign_by_likelihood(magnitudes: np.ndarray, solved: np.ndarray, noise: np.ndarray, ids: np.ndarray,
                           weights: np.ndarray, labels: np.ndarray, cluster_classes: np.ndarray,
                           chunk: int = 64) -> np.ndarray:
    """(d') With images recovered, each encoding's slots are chosen again, one slot at a time
    (the others fixed): among the clusters of the slot's class (from the soft label), the one
    under which |e| is likeliest, |e| = |m + n| with the fitted Gaussian noise n (a folded
    normal). Similarity scores compare encodings with encodings; this compares each encoding
    with the recovered images, so assignment errors of the clustering are undone. Returns new
    ids (m, slots)."""
    import torch

    m = len(ids)
    observed = torch.from_numpy(magnitudes.reshape(m, -1).astype(np.float32))
    x = torch.from_numpy(solved.reshape(len(solved), -1).astype(np.float32))
    inverse_noise = torch.from_numpy((1.0 / noise).astype(np.float32))
    slot_class = _slot_classes(labels, ids.shape[1])
    ids = ids.copy()
    w = torch.from_numpy(weights.astype(np.float32))
    for slot in range(ids.shape[1]):
        mixture = torch.from_numpy(mixing_estimate(ids, weights, len(solved)).astype(np.float32)) @ x
        for label_class in np.unique(slot_class[:, slot]):
            candidates = np.flatnonzero(cluster_classes == label_class)
            if label_class < 0 or candidates.size < 2:
                continue
            of_class = np.flatnonzero(slot_class[:, slot] == label_class)
            for start in range(0, len(of_class), chunk):
                rows = of_class[start:start + chunk]
                current = torch.from_numpy(ids[rows, slot])
                own = torch.where(current[:, None] >= 0, w[rows, slot][:, None] * x[current.clamp_min(0)], 0.0)
                rest = mixture[rows] - own                                       # (r, P)
                trial = rest[:, None, :] + w[rows, slot][:, None, None] * x[candidates][None]  # (r, c, P)
                z = observed[rows][:, None, :] * trial * inverse_noise[rows][:, None, :]
                log_likelihood = (z.abs() + torch.log1p(torch.exp(-2 * z.abs()))
                                  - 0.5 * trial ** 2 * inverse_noise[rows][:, None, :]).sum(dim=2)
                ids[rows, slot] = candidates[log_likelihood.argmax(dim=1).numpy()]
    return ids


@dataclass
class EncodingsOnlyRecovery:
    recovered: np.ndarray      # (clusters, H, W, C) in [0, 1], in no particular order
    clusters: list             # (c) the grown clusters: rows of the publication
    assigned: list             # (d) the encodings assigned to each cluster with the labels
    ids: np.ndarray
    weights: np.ndarray


def recover_encodings_only(publication: Publication, n_images: int, private_terms: int, mean, std,
                           features: np.ndarray, rounds: int = 2, iterations: int = 40,
                           sign_prior: np.ndarray | None = None) -> EncodingsOnlyRecovery:
    """Tier 2 from the publication alone: `features` (m, d) unit rows from `handmade_features`
    or `network_features`; the attacker knows the number of private images (and so T = m / n).
    Clusters and the label assignment start it; then `rounds` of reconstruction and
    reassignment by likelihood, and a last reconstruction. The share of each encoding that no
    private image explains (cross mode's public patches) is 1 - the sum of its soft label.
    `sign_prior`: `fit_sign_prior` on public data picks the one sign |e| leaves (else
    "brighter at the top" alone)."""
    similarity = features @ features.T
    encodings_per_image = len(publication.magnitudes) // n_images
    cluster_size = private_terms * encodings_per_image
    clusters = grow_clusters(similarity, n_images, cluster_size, compatible=shared_class(publication.labels))
    ids, weights, classes = assign_with_labels(similarity, clusters, publication.labels,
                                               core=max(encodings_per_image, 2))
    other_share = np.clip(1.0 - publication.labels.sum(axis=1), 0.0, 1.0)
    solved, noise = reconstruct_em(publication.magnitudes, ids, weights, len(clusters), other_share, iterations)
    for _ in range(rounds):
        ids = reassign_by_likelihood(publication.magnitudes, solved, noise, ids, weights, publication.labels, classes)
        solved, noise = reconstruct_em(publication.magnitudes, ids, weights, len(clusters), other_share, iterations)
    recovered = _to_pixels(_apply_sign_prior(solved, std, sign_prior), mean, std)
    assigned = [np.flatnonzero((ids == c).any(axis=1)) for c in range(len(clusters))]
    return EncodingsOnlyRecovery(recovered, clusters, assigned, ids, weights)


def public_crops(count: int, size: int = 32, data_dir=None, seed: int = 0, pool=None) -> np.ndarray:
    """`count` random size x size crops of public images, (count, size, size, 3) uint8: of
    `pool` (a PublicPool, e.g. the cross-mode encoder's) or else of the Tiny-ImageNet
    validation images (the attacker's public data)."""
    from pathlib import Path

    from ..datasets import default_data_dir
    from ..pool import PublicPool

    if pool is None:
        pool = PublicPool.from_tar(Path(data_dir or default_data_dir()) / "tiny-imagenet-val.tar", short_side=40,
                                   limit=count, progress=False)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pool))  # every image once before any repeats
    crops = []
    for i in range(count):
        image = pool.image(int(order[i % len(pool)]))
        y, x = rng.integers(0, image.shape[0] - size + 1), rng.integers(0, image.shape[1] - size + 1)
        crops.append(image[y:y + size, x:x + size])
    return np.stack(crops)


def _odd_features(normalized: np.ndarray) -> np.ndarray:
    """Features f with f(-x) = -f(x) of images (n, C, H, W), each on its own scale: block means
    of x and of x^3 (8 x 8 blocks per channel)."""
    n, channels, height, width = normalized.shape
    z = normalized / (normalized.std(axis=(1, 2, 3), keepdims=True) + 1e-12)
    fy, fx = max(height // 8, 1), max(width // 8, 1)
    z = z[:, :, :height // fy * fy, :width // fx * fx]

    def blocks(v):
        return v.reshape(n, channels, height // fy, fy, width // fx, fx).mean(axis=(3, 5)).reshape(n, -1)

    return np.concatenate([blocks(z), blocks(z ** 3)], axis=1)


def fit_sign_prior(public_images: np.ndarray, mean, std) -> np.ndarray:
    """|mixture| leaves one sign for the whole recovered set. The attacker learns which sign
    photos have from public data: Fisher's discriminant between public images x and their
    negations -x on odd features (`_odd_features`; the two classes share a covariance and have
    opposite means, so w = cov^-1 mean). `public_images` (N, H, W, C) uint8, normalized with
    the encoder's (public) mean and std. Returns w; a recovery votes sign(w . f(x))."""
    x = (np.asarray(public_images, np.float64) / 255 - np.asarray(mean)) / np.asarray(std)
    features = _odd_features(x.transpose(0, 3, 1, 2))
    centre = features.mean(axis=0)
    covariance = np.cov(features, rowvar=False) + np.outer(centre, centre)  # second moment: both classes pooled
    covariance += 1e-3 * np.trace(covariance) / len(centre) * np.eye(len(centre))
    return np.linalg.solve(covariance, centre)


def _apply_sign_prior(normalized: np.ndarray, std, prior: np.ndarray | None) -> np.ndarray:
    """Channel signs from colour correlation; the global sign from the per-image votes of a
    learned prior (`fit_sign_prior`), else (no prior, or a tied vote) "brighter at the top"."""
    aligned = _align_channels(normalized)
    votes = 0.0 if prior is None else np.sign(_odd_features(aligned) @ prior).sum()
    if votes == 0:
        return _sign_by_sky(aligned, std)
    return aligned if votes > 0 else -aligned


def _default_public_images(encoder: Encoder, size: int, seed: int):
    from ..datasets import default_data_dir

    if encoder.public is not None:
        return public_crops(2000, size=size, seed=seed, pool=encoder.public)
    if (default_data_dir() / "tiny-imagenet-val.tar").exists():
        return public_crops(2000, size=size, seed=seed)
    return None


def run_encodings_only(images, labels, encoder: Encoder, encodings_per_image: int, similarity: str = "handmade",
                       public_images=None, train_seconds: float = 90.0, rounds: int = 2, seed: int = 0) -> Scores:
    """Tier 2 end to end: challenge, publication (|encodings| and labels, shuffled), attack,
    scores after Hungarian matching, with the cluster purity (of the clusters after the label
    assignment) and its chance level (random clusters of the same sizes). `similarity`:
    "handmade" or "network" (trained on `public_images` for `train_seconds`; the training time
    counts in the runtime). `public_images` (N, H, W, C) uint8 also fit the sign prior; default:
    2000 crops of the cross-mode encoder's pool, else of Tiny-ImageNet where the data folder
    has it, else none (the sign from "brighter at the top" alone)."""
    challenge = make_challenge(images, labels, encoder, encodings_per_image)
    publication = publish(challenge, seed)
    start = time.perf_counter()
    if public_images is None:
        public_images = _default_public_images(encoder, images.shape[1], seed)
    sign_prior = None if public_images is None else fit_sign_prior(public_images, challenge.mean, challenge.std)
    if similarity == "handmade":
        features = handmade_features(publication.magnitudes)
    elif similarity == "network":
        if public_images is None:
            raise ValueError("the trained similarity needs public images: pass public_images, or put "
                             "tiny-imagenet-val.tar in the data folder")
        network = train_similarity_network(public_images, encoder, seconds=train_seconds, seed=seed)
        features = network_features(network, publication.magnitudes)
    else:
        raise ValueError(f"similarity must be 'handmade' or 'network', got {similarity!r}")
    recovery = recover_encodings_only(publication, len(images), encoder.private_terms, challenge.mean, challenge.std,
                                      features, rounds=rounds, sign_prior=sign_prior)
    seconds = time.perf_counter() - start
    scores = score(recovery.recovered, challenge.images, seconds, seed=seed, match=True)
    members = private_members(challenge.keys)[publication.order]
    scores.purity = cluster_purity(recovery.assigned, members)
    # one image per encoding, as the challenge asks: the recovery of the cluster holding its
    # largest labelled private term (gray where the labels placed it in no cluster)
    slot = np.argmax(recovery.weights, axis=1)
    cluster = recovery.ids[np.arange(len(slot)), slot]
    gray = np.full((1, *recovery.recovered.shape[1:]), 0.5)
    decryptions = np.concatenate([recovery.recovered, gray])[np.where(cluster >= 0, cluster, len(recovery.recovered))]
    scores.per_encoding = challenge_scores(decryptions, members, challenge.images)
    rng = np.random.default_rng(seed)
    scores.chance_purity = cluster_purity([rng.choice(len(members), len(c), replace=False) for c in recovery.assigned
                                           if len(c)], members)
    scores.challenge = challenge
    return scores
