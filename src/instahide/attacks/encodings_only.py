"""Tier 2 (`recover_encodings_only`, `run_encodings_only`): the attacker sees only |encodings|
(the sign flip hides nothing else) and the released soft labels (`publish`), as in Carlini et
al. (IEEE S&P 2021): (a) a similarity between encodings, hand-made (`handmade_features`) or
(b) a small network trained on encodings the attacker makes from public data
(`train_similarity_network`), (c) greedy cluster growth (`grow_clusters`), (d) assignment of
encodings to clusters with the labels (`assign_with_labels`), and (e) joint reconstruction by
gradient descent from Tier 1's sign retrieval (`reconstruct_jointly`). Parts (b) and (e) need
torch."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..encoder import Encoder
from .challenge import Challenge, make_challenge, private_members
from .known_mixing import _retrieve_signs, _sign_by_channels_and_sky, _to_pixels
from .metrics import Scores, challenge_scores, cluster_purity, score


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
                  max_overlap: float = 0.5, explain_away: bool = True) -> list[np.ndarray]:
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


def reconstruct_jointly(magnitudes: np.ndarray, ids: np.ndarray, weights: np.ndarray, n_clusters: int, mean, std,
                        steps: int = 20, learning_rate: float = 0.01, restarts: int = 2, seed: int = 0) -> np.ndarray:
    """(e) Joint reconstruction of the unknown images x (normalized units) such that the
    mixtures m_j = sum_slots weights[j] x[ids[j]] explain |e_j|: the loss
    mean(min((|e| - m)^2, (|e| + m)^2)), which equals mean((|e| - |m|)^2).

    Gradient descent from a random start stalls in local minima (we measured SSIM near chance
    even with the true mixing map), so the start comes from the Tier 1 per-pixel sign retrieval
    on the estimated mixing matrix, and `steps` of Adam on the loss follow (they change little
    in our measurements). |m| = |-m| leaves one sign per channel (`_sign_by_channels_and_sky`).
    Returns (n_clusters, H, W, C) in [0, 1]."""
    import torch

    m, channels, height, width = magnitudes.shape
    a = mixing_estimate(ids, weights, n_clusters)
    start = _retrieve_signs(magnitudes, a, iterations=30, restarts=restarts, seed=seed)
    x = torch.nn.Parameter(torch.from_numpy(start.reshape(n_clusters, -1).astype(np.float32)))
    mixing = torch.from_numpy(a.astype(np.float32))
    target = torch.from_numpy(magnitudes.reshape(m, -1).astype(np.float32))
    optimizer = torch.optim.Adam([x], lr=learning_rate)
    for _ in range(steps):
        loss = ((target - (mixing @ x).abs()) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    solved = x.detach().numpy().astype(np.float64).reshape(n_clusters, channels, height, width)
    return _to_pixels(_sign_by_channels_and_sky(solved, std), mean, std)


@dataclass
class EncodingsOnlyRecovery:
    recovered: np.ndarray      # (clusters, H, W, C) in [0, 1], in no particular order
    clusters: list             # (c) the grown clusters: rows of the publication
    assigned: list             # (d) the encodings assigned to each cluster with the labels
    ids: np.ndarray
    weights: np.ndarray


def recover_encodings_only(publication: Publication, n_images: int, private_terms: int, mean, std,
                           features: np.ndarray, steps: int = 20, seed: int = 0) -> EncodingsOnlyRecovery:
    """Tier 2 from the publication alone: `features` (m, d) unit rows from `handmade_features`
    or `network_features`; the attacker knows the number of private images (and so T = m / n)."""
    similarity = features @ features.T
    encodings_per_image = len(publication.magnitudes) // n_images
    cluster_size = private_terms * encodings_per_image
    clusters = grow_clusters(similarity, n_images, cluster_size)
    ids, weights, _ = assign_with_labels(similarity, clusters, publication.labels, core=max(encodings_per_image, 2))
    assigned = [np.flatnonzero((ids == c).any(axis=1)) for c in range(len(clusters))]
    recovered = reconstruct_jointly(publication.magnitudes, ids, weights, len(clusters), mean, std, steps=steps,
                                    seed=seed)
    return EncodingsOnlyRecovery(recovered, clusters, assigned, ids, weights)


def public_crops(count: int, size: int = 32, data_dir=None, seed: int = 0) -> np.ndarray:
    """`count` random size x size crops of Tiny-ImageNet validation images (the attacker's public
    data), (count, size, size, 3) uint8."""
    from pathlib import Path

    from ..datasets import default_data_dir
    from ..pool import PublicPool

    pool = PublicPool.from_tar(Path(data_dir or default_data_dir()) / "tiny-imagenet-val.tar", short_side=40,
                               limit=count, progress=False)
    rng = np.random.default_rng(seed)
    crops = []
    for i in range(count):
        image = pool.image(i % len(pool))
        y, x = rng.integers(0, image.shape[0] - size + 1), rng.integers(0, image.shape[1] - size + 1)
        crops.append(image[y:y + size, x:x + size])
    return np.stack(crops)


def run_encodings_only(images, labels, encoder: Encoder, encodings_per_image: int, similarity: str = "handmade",
                       public_images=None, train_seconds: float = 90.0, steps: int = 20, seed: int = 0) -> Scores:
    """Tier 2 end to end: challenge, publication (|encodings| and labels, shuffled), attack,
    scores after Hungarian matching, with the cluster purity (of the clusters after the label
    assignment) and its chance level (random clusters of the same sizes). `similarity`:
    "handmade" or "network" (trained on `public_images`, default 2000 Tiny-ImageNet crops, for
    `train_seconds`; the training time counts in the runtime)."""
    challenge = make_challenge(images, labels, encoder, encodings_per_image)
    publication = publish(challenge, seed)
    start = time.perf_counter()
    if similarity == "handmade":
        features = handmade_features(publication.magnitudes)
    elif similarity == "network":
        if public_images is None:
            public_images = public_crops(2000, size=images.shape[1], seed=seed)
        network = train_similarity_network(public_images, encoder, seconds=train_seconds, seed=seed)
        features = network_features(network, publication.magnitudes)
    else:
        raise ValueError(f"similarity must be 'handmade' or 'network', got {similarity!r}")
    recovery = recover_encodings_only(publication, len(images), encoder.private_terms, challenge.mean, challenge.std,
                                      features, steps=steps, seed=seed)
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
