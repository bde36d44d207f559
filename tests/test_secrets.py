"""Secrets: keys never appear in reprs, exceptions or log records; the default key comes from
the OS's cryptographic source, so encoders created without a key have different masks."""

import logging

import numpy as np
import pytest

import instahide
from instahide import keys as keys_module


def forms(secret: bytes) -> list:
    """Ways a key could leak into text: hex, Python repr, its first 8 bytes, the byte list."""
    return [secret.hex(), secret.hex().upper(), repr(secret), secret[:8].hex(), repr(secret[:8]), str(list(secret[:8]))]


def assert_hidden(text: str, *secrets: bytes) -> None:
    for secret in secrets:
        for form in forms(secret):
            assert form not in text, f"key material in {text!r}"


@pytest.fixture
def setup():
    rng = np.random.default_rng(0)
    secret = instahide.new_secret_key()
    encoder = instahide.Encoder(k=3, pad=1, key=secret)
    images, labels = rng.integers(0, 256, (12, 6, 6, 3), dtype=np.uint8), rng.integers(0, 4, 12)
    return secret, encoder, encoder.keys(12, 7), images, labels


def test_reprs_hide_the_keys(setup):
    secret, encoder, keys, _, _ = setup
    for text in (repr(encoder), str(encoder), repr(keys), str(keys), f"{keys}", f"{encoder!r}"):
        assert_hidden(text, secret, keys.mask_key)
        assert "<hidden>" in text


def test_exceptions_hide_the_keys(setup):
    secret, encoder, keys, images, labels = setup
    bad_index = keys.index.copy()
    bad_index[2, 1] = 99
    bad_lam = keys.lam.copy()
    bad_lam[3, 2] = np.nan
    fields = dict(index=keys.index, lam=keys.lam, offset=keys.offset, flip=keys.flip, epoch=7, private_terms=3)

    def forged(**changes):
        return instahide.Keys(**{**fields, **changes}, mask_key=keys.mask_key)

    attempts = [
        lambda: instahide.Encoder(key=secret[:31]), lambda: instahide.Encoder(key=secret + b"\0"),
        lambda: instahide.Encoder(key=secret.hex()), lambda: instahide.mask_key_of(secret[:16]),
        lambda: instahide.mask(keys.mask_key[:31], 0, [0], (3, 6, 6)),
        lambda: instahide.mask(keys.mask_key, -1, [0], (3, 6, 6)),
        lambda: instahide.Keys(**fields, mask_key=keys.mask_key[:20]),
        lambda: forged(epoch=-1),
        lambda: encoder.encode(images, labels, forged(index=bad_index)),
        lambda: encoder.encode(images, labels, forged(lam=bad_lam)),
        lambda: instahide.reference.encode(images, labels, forged(lam=bad_lam)),
        lambda: encoder.encode(images[:11], labels[:11], keys), lambda: encoder.encode(images, labels, keys, rows=[12]),
        lambda: instahide._core.encode(sources=[instahide._core.ImageSource.host(images=images, channels_last=True,
                                                                                 scale=[1.0] * 3, shift=[0.0] * 3)],
                                       private_terms=3, index=keys.index, lam=keys.lam,
                                       offset=keys.offset, flip=keys.flip, row_id=np.arange(12),
                                       mask_key=keys.mask_key[:-1], epoch=7, sign=0,
                                       out=np.empty((12, 3, 6, 6), np.float32), out_type=0, out_channels_last=False),
        lambda: instahide.derive_keys(secret, 7, 0, k=3), lambda: instahide.derive_keys(secret, 7, 12, k=3, upper=0.1),
    ]
    for attempt in attempts:
        with pytest.raises((TypeError, ValueError)) as info:
            attempt()
        assert_hidden(str(info.value) + repr(info.value) + "".join(map(str, info.value.args)), secret, keys.mask_key)
    assert len(attempts) == 16


def test_nothing_is_logged_while_encoding(setup, caplog):
    secret, encoder, keys, images, labels = setup
    with caplog.at_level(logging.DEBUG):
        encoder.encode(images, labels, keys)
        encoder.keys(12, 8)
        instahide.reference.encode(images, labels, keys, mean=None)
    assert_hidden(caplog.text, secret, keys.mask_key)


def test_default_key_comes_from_the_os_cryptographic_source(monkeypatch):
    calls = []

    def token_bytes(n):
        calls.append(n)
        return bytes(range(n))

    monkeypatch.setattr(keys_module.secrets, "token_bytes", token_bytes)
    assert instahide.Encoder(k=2).key == bytes(range(32)) and calls == [32]
    assert instahide.new_secret_key() == bytes(range(32)) and calls == [32, 32]


def test_encoders_without_a_key_have_different_masks():
    rng = np.random.default_rng(1)
    images, labels = rng.integers(1, 256, (16, 8, 8, 3), dtype=np.uint8), rng.integers(0, 4, 16)
    first, second = instahide.Encoder(k=1), instahide.Encoder(k=1)  # k=1: the output is the signed image alone
    assert first.key != second.key
    masks = [instahide.mask(e.keys(16, 0).mask_key, 0, np.arange(16), (3, 8, 8)) for e in (first, second)]
    assert 0.4 < (masks[0] != masks[1]).mean() < 0.6  # independent masks disagree on about half the signs
    outs = [e.encode(images, labels, e.keys(16, 0))[0] for e in (first, second)]
    assert np.array_equal(np.abs(outs[0]), np.abs(outs[1]))  # same images, k = 1...
    assert np.array_equal(np.signbit(outs[0]) != np.signbit(outs[1]), masks[0] != masks[1])  # ...signed differently
