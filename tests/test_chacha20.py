"""ChaCha20 (RFC 8439) in the core and in the numpy reference, and mask spec v1."""

import struct

import numpy as np
import pytest

import instahide
from instahide import _core, reference

KEY = bytes(range(32))

# RFC 8439 section 2.3.2: key 00..1f, nonce 000000090000004a00000000, block counter 1.
RFC_2_3_2 = bytes.fromhex(
    "10f1e7e4d13b5915500fdd1fa32071c4c7d1f4c733c068030422aa9ac3d46c4e"
    "d2826446079faa0914c2d705d98b02a2b5129cd1de164eb9cbd083e8a2503c4e")
# RFC 8439 appendix A.1, test vectors 1 and 2: zero key and nonce, counters 0 and 1.
RFC_A1 = bytes.fromhex(
    "76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7"
    "da41597c5157488d7724e03fb8d84a376a43b8f41518a11cc387b669b2ee6586"
    "9f07e7be5551387a98ba977c732d080dcb0f29a048e3656912c6533e32ee7aed"
    "29b721769ce64e43d57133b074d839d531ed1f28510afb45ace10a1f4b794d6f")
# RFC 8439 section 2.4.2: the "sunscreen" plaintext encrypted from block counter 1.
SUNSCREEN = (b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, "
             b"sunscreen would be it.")
SUNSCREEN_CIPHERTEXT = bytes.fromhex(
    "6e2e359a2568f98041ba0728dd0d6981e97e7aec1d4360c20a27afccfd9fae0b"
    "f91b65c5524733ab8f593dabcd62b3571639d624e65152ab8f530c359f0861d8"
    "07ca0dbf500d6a6156a38e088a22b65e52bc514d16ccf806818ce91ab7793736"
    "5af90bbf74a35be6b40b8eedf2785e42874d")


def core_stream(key, nonce, counter, blocks):
    return _core.chacha20(key, nonce, counter, blocks).tobytes()


def reference_stream(key, nonce, counter, blocks):
    words = np.frombuffer(nonce, "<u4")
    counters = np.arange(counter, counter + blocks, dtype=np.uint32)
    return reference.chacha20_blocks(key, counters, np.tile(words, (blocks, 1))).tobytes()


@pytest.mark.parametrize("stream", [core_stream, reference_stream])
def test_rfc8439_vectors(stream):
    assert stream(KEY, bytes.fromhex("000000090000004a00000000"), 1, 1) == RFC_2_3_2
    assert stream(bytes(32), bytes(12), 0, 2) == RFC_A1
    keystream = stream(KEY, bytes.fromhex("000000000000004a00000000"), 1, 2)
    assert bytes(a ^ b for a, b in zip(SUNSCREEN, keystream[:len(SUNSCREEN)], strict=True)) == SUNSCREEN_CIPHERTEXT


def test_core_and_reference_agree_on_random_keys(rng):
    for blocks in (1, 15, 16, 17, 40):
        key, nonce = rng.bytes(32), rng.bytes(12)
        counter = int(rng.integers(0, 2**32 - blocks))
        assert core_stream(key, nonce, counter, blocks) == reference_stream(key, nonce, counter, blocks)


def test_against_the_cryptography_package(rng):
    crypto = pytest.importorskip("cryptography.hazmat.primitives.ciphers")
    key, nonce = rng.bytes(32), rng.bytes(12)
    cipher = crypto.Cipher(crypto.algorithms.ChaCha20(key, struct.pack("<I", 7) + nonce), mode=None)
    assert core_stream(key, nonce, 7, 5) == cipher.encryptor().update(bytes(320))


def test_counter_must_not_wrap():
    with pytest.raises(ValueError, match="wrap"):
        _core.chacha20(KEY, bytes(12), 2**32 - 1, 2)


def test_mask_spec_v1_bit_order():
    """Element j takes bit j % 8 (LSB first) of keystream byte j // 8; nonce = epoch, row id."""
    epoch, row = 7, 2**40 + 3
    stream = core_stream(KEY, struct.pack("<IQ", epoch, row), 0, 2)
    expected = np.array([-1 if (stream[j // 8] >> (j % 8)) & 1 else 1 for j in range(3 * 8 * 9)], np.int8)
    assert np.array_equal(instahide.mask(KEY, epoch, [row], (3, 8, 9))[0].reshape(-1), expected)
    assert np.array_equal(reference.mask(KEY, epoch, [row], (3, 8, 9))[0].reshape(-1), expected)


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 5, 7), (4, 17, 3), (3, 64, 64)])
def test_core_mask_equals_reference_mask(rng, shape):
    key = rng.bytes(32)
    rows = rng.integers(0, 2**62, 20)
    epoch = int(rng.integers(0, 2**32))
    assert np.array_equal(instahide.mask(key, epoch, rows, shape), reference.mask(key, epoch, rows, shape))


def test_mask_is_balanced_and_independent_across_epochs_and_rows(rng):
    key = rng.bytes(32)
    m = instahide.mask(key, 0, np.arange(200), (3, 32, 32)).astype(np.float64)
    assert abs(m.mean()) < 0.01  # 614,400 fair signs: sd of the mean is 0.0013
    other_epoch = instahide.mask(key, 1, np.arange(200), (3, 32, 32))
    assert abs((m * other_epoch).mean()) < 0.01
    assert abs((m[:-1] * m[1:]).mean()) < 0.01


def test_mask_rejects_bad_input():
    with pytest.raises(TypeError):
        instahide.mask(b"short", 0, [0], (3, 4, 4))
    with pytest.raises(ValueError):
        instahide.mask(KEY, -1, [0], (3, 4, 4))
    with pytest.raises(ValueError):
        instahide.mask(KEY, 0, [-1], (3, 4, 4))
    with pytest.raises(ValueError):
        instahide.mask(KEY, 0, [0], (3, 4))
