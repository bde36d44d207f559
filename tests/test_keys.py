"""Keys: derivation from the secret key, statistics, determinism, save/load."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import instahide
from instahide.keys import derive_keys


def test_default_key_is_fresh_and_hidden():
    a, b = instahide.Encoder(), instahide.Encoder()
    assert a.key != b.key and len(a.key) == 32
    assert a.key.hex() not in repr(a) and "hidden" in repr(a)
    keys = a.keys(10, 0)
    assert keys.mask_key.hex() not in repr(keys)


def test_deterministic_given_key_epoch_and_options():
    key = instahide.new_secret_key()
    a = derive_keys(key, 3, 500, k=4, pad=4, hflip=True)
    b = derive_keys(key, 3, 500, k=4, pad=4, hflip=True)
    for name in ("index", "lam", "offset", "flip"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    assert a.mask_key == b.mask_key == instahide.mask_key_of(key)


def test_epochs_and_keys_give_unrelated_keys():
    key = instahide.new_secret_key()
    a, b = derive_keys(key, 0, 2000, k=4), derive_keys(key, 1, 2000, k=4)
    c = derive_keys(instahide.new_secret_key(), 0, 2000, k=4)
    for other in (b, c):
        assert (a.index[:, 1:] == other.index[:, 1:]).mean() < 0.01
        assert abs(np.corrcoef(a.lam[:, 0], other.lam[:, 0])[0, 1]) < 0.1
    assert a.mask_key == b.mask_key != c.mask_key


@given(n=st.integers(1, 300), k=st.integers(1, 8), upper=st.floats(0.3, 1.0), pad=st.integers(0, 5),
       hflip=st.booleans(), epoch=st.integers(0, 2**32 - 1))
def test_key_statistics(n, k, upper, pad, hflip, epoch):
    upper = max(upper, 1.0 / k + 0.05)
    keys = derive_keys(bytes(range(32)), epoch, n, k=k, upper=upper, pad=pad, hflip=hflip)
    assert keys.index.shape == (n, k) and keys.lam.shape == (n, k) and keys.offset.shape == (n, k, 2)
    np.testing.assert_allclose(keys.lam.sum(axis=1), 1, atol=1e-6)
    assert (keys.lam > 0).all()
    if k > 1:
        assert keys.lam.max() <= upper + 1e-6
    assert np.array_equal(keys.index[:, 0], np.arange(n))  # term 0 is the row's own image
    for t in range(1, k):  # every partner slot is a permutation of all rows
        assert np.array_equal(np.sort(keys.index[:, t]), np.arange(n))
    assert np.abs(keys.offset).max(initial=0) <= pad
    if not hflip:
        assert not keys.flip.any()


@given(n=st.integers(1, 200), k=st.integers(1, 8))
def test_distinct_partners(n, k):
    if n < k:
        with pytest.raises(ValueError, match="distinct"):
            derive_keys(bytes(32), 0, n, k=k, distinct=True)
        return
    keys = derive_keys(bytes(32), 0, n, k=k, distinct=True)
    for row in keys.index:
        assert len(set(row.tolist())) == k
    for t in range(1, k):
        assert np.array_equal(np.sort(keys.index[:, t]), np.arange(n))


def test_default_partners_may_repeat_like_the_authors_code():
    keys = derive_keys(bytes(32), 0, 2000, k=4)
    repeats = np.mean([len(set(r.tolist())) < 4 for r in keys.index])
    assert 0.001 < repeats < 0.01  # about 6 / n of rows meet an image twice


def test_coefficient_distribution_matches_the_authors_rule():
    """|N(0,1)| normalized and redrawn while max > upper: compare with a direct simulation."""
    keys = derive_keys(bytes(32), 0, 20000, k=4, upper=0.65)
    rng = np.random.default_rng(0)
    g = np.abs(rng.normal(size=(80000, 4)))
    lam = g / g.sum(axis=1, keepdims=True)
    lam = lam[lam.max(axis=1) <= 0.65][:20000]
    for q in (0.1, 0.5, 0.9):
        assert abs(np.quantile(keys.lam, q) - np.quantile(lam, q)) < 0.01
    assert abs(keys.lam.max(axis=1).mean() - lam.max(axis=1).mean()) < 0.005


def test_offsets_and_flips_are_uniform():
    keys = derive_keys(bytes(32), 0, 20000, k=4, pad=4, hflip=True)
    counts = np.bincount((keys.offset + 4).reshape(-1), minlength=9) / keys.offset.size
    np.testing.assert_allclose(counts, 1 / 9, atol=0.005)
    assert abs(keys.flip.mean() - 0.5) < 0.01


def test_save_and_load_round_trip(tmp_path):
    keys = derive_keys(instahide.new_secret_key(), 17, 100, k=5, pad=2, hflip=True)
    keys.save(tmp_path / "keys.npz")
    loaded = instahide.Keys.load(tmp_path / "keys.npz")
    for name in ("index", "lam", "offset", "flip"):
        assert np.array_equal(getattr(keys, name), getattr(loaded, name))
    assert (loaded.epoch, loaded.mask_key, loaded.private_terms) == (17, keys.mask_key, 5)
    np.savez(tmp_path / "other.npz", index=keys.index)
    with pytest.raises(ValueError, match="not an instahide keys file"):
        instahide.Keys.load(tmp_path / "other.npz")


def test_bad_key_options():
    key = bytes(32)
    with pytest.raises(TypeError):
        derive_keys(b"short", 0, 10, k=4)
    with pytest.raises(ValueError, match="upper"):
        derive_keys(key, 0, 10, k=4, upper=0.25)
    with pytest.raises(ValueError, match="n must be"):
        derive_keys(key, 0, 0, k=4)
    with pytest.raises(ValueError, match="epoch"):
        derive_keys(key, 2**32, 10, k=4)
    with pytest.raises(ValueError, match="pad"):
        derive_keys(key, 0, 10, k=4, pad=-1)


def test_keys_validate_their_arrays():
    good = dict(index=np.zeros((3, 2), np.int64), lam=np.full((3, 2), 0.5, np.float32),
                offset=np.zeros((3, 2, 2), np.int32), flip=np.zeros((3, 2), bool), epoch=0, mask_key=bytes(32),
                private_terms=2)
    instahide.Keys(**good)
    for name, value, error in [("lam", np.zeros((3, 2)), TypeError),
                               ("offset", np.zeros((3, 2, 3), np.int32), ValueError),
                               ("mask_key", b"x", TypeError), ("epoch", -1, ValueError),
                               ("private_terms", 3, ValueError)]:
        with pytest.raises(error):
            instahide.Keys(**{**good, name: value})
