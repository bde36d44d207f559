"""Attacks on InstaHide encodings, run on our own encodings so that users can measure what
InstaHide hides in their setting (see docs/privacy.md).

Tier 0 (`audit`): what the configuration gives away with no computation.
Tier 1 (`recover_known_mixing`): an upper bound, as GradAttack's: the attacker knows which
images and coefficients made every encoding (not the signs) and solves, per pixel, the phase
retrieval problem |A x| = |e| with A shared by all pixels.
Tier 1 with crop and flip (`run_known_windows`): the same, windows known, solved by the
transform-aware EM of `augmented`.
Tier 2 (`recover_encodings_only`): the attacker sees only |encodings| (the sign flip hides
nothing else) and the released soft labels, as in Carlini et al. (IEEE S&P 2021): a similarity
between encodings (hand-made, or a small network trained on encodings the attacker makes from
public data), greedy cluster growth, assignment of encodings to clusters with the labels, then
reconstruction by EM under a noise model alternating with reassignment by likelihood.

Modules: `challenge` (the encodings attacked, with the ground truth), `audit` (Tier 0),
`known_mixing` (Tier 1), `encodings_only` (Tier 2), `augmented` (Tiers 1 and 2 on encodings with
crop and flip), `metrics` (scores of a recovery, and its
picture); every public name is importable from `instahide.attacks` itself.
"""

from .audit import audit
from .augmented import reconstruct_transformed, run_augmented, run_known_windows, symmetric_features
from .challenge import (
    AUGMENTATIONS,
    SETTINGS,
    Challenge,
    challenge_encoder,
    challenge_pool,
    dominant_members,
    make_challenge,
    private_members,
)
from .encodings_only import (
    EncodingsOnlyRecovery,
    Publication,
    assign_with_labels,
    attacker_encoder,
    edge_maps,
    grow_clusters,
    handmade_features,
    mixing_estimate,
    network_features,
    public_crops,
    publish,
    reassign_by_likelihood,
    reconstruct_em,
    recover_encodings_only,
    run_encodings_only,
    shared_class,
    similarity_network,
    train_similarity_network,
)
from .known_mixing import mixing_matrix, public_part, recover_known_mixing, run_known_mixing
from .metrics import (
    Scores,
    challenge_scores,
    cluster_purity,
    match_recoveries,
    save_grid,
    score,
    ssim_matrix,
    ssim_pairs,
)

__all__ = [
    # the attacked setting
    "SETTINGS", "AUGMENTATIONS", "Challenge", "challenge_encoder", "challenge_pool", "make_challenge",
    "dominant_members", "private_members",
    # Tier 0
    "audit",
    # Tier 1
    "mixing_matrix", "public_part", "recover_known_mixing", "run_known_mixing", "run_known_windows",
    # Tier 2
    "Publication", "publish", "edge_maps", "handmade_features", "similarity_network", "attacker_encoder",
    "train_similarity_network", "network_features", "shared_class", "grow_clusters", "assign_with_labels",
    "mixing_estimate",
    "reconstruct_em", "reassign_by_likelihood", "EncodingsOnlyRecovery", "recover_encodings_only", "public_crops",
    "run_encodings_only",
    # Tier 2 with crop and flip (augmented.py)
    "symmetric_features", "reconstruct_transformed", "run_augmented",
    # scores
    "Scores", "ssim_matrix", "ssim_pairs", "challenge_scores", "match_recoveries", "score", "cluster_purity",
    "save_grid",
]
