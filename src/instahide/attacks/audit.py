"""Tier 0 (`audit`): what an encoder's configuration gives away, with no computation."""

from __future__ import annotations

from ..encoder import Encoder


def audit(encoder: Encoder, encodings_per_image: int, labels_released: bool = True) -> list[str]:
    """Tier 0: findings that need no computation."""
    findings = ["Randomness comes from a 32-byte secret key (the OS's cryptographic source by default) through "
                "ChaCha20: attacks on the generator do not apply (the InstaHide Challenge's PRNG attack exploited an "
                "implementation bug of the challenge set's generation, not InstaHide itself)."]
    if encoder.sign == "flip" or encoder.sign == "abs":
        findings.append("The sign flip hides only signs: publishing sign * mixture reveals |mixture| exactly, "
                        "the same as sign='abs'.")
    else:
        findings.append("sign='none': the encodings are plain mixtures (k-way mixup), no mask at all.")
    findings.append(f"Each private image is encoded {encodings_per_image} times; every extra encoding adds "
                    "equations for an attacker (with the mixing known, about 10-20 encodings per image sufficed "
                    "to recover images exactly in our measurements; see docs/privacy.md).")
    if labels_released:
        findings.append("Labels are released: they reveal the classes mixed in each encoding and, through the "
                        "soft-label values, the private coefficients.")
    return findings
