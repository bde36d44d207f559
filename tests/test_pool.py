"""Cross-dataset mode: the public pool, its patches, and the core against the reference."""

import numpy as np
import pytest

import instahide
from instahide import reference

from conftest import CIFAR_MEAN, CIFAR_STD, DATA_DIR
from helpers import assert_encodings_close, assert_signs_identical


def mixed_pool(rng, count=40, channels=3):
    images = [rng.integers(0, 256, (int(rng.integers(32, 70)), int(rng.integers(32, 70)), channels), dtype=np.uint8)
              for _ in range(count)]
    return instahide.PublicPool.from_images(images, short_side=None, progress=False), images


@pytest.fixture(scope="module")
def tiny_imagenet_pool():
    path = DATA_DIR / "tiny-imagenet-val.tar"
    if not path.exists():
        pytest.skip(f"no Tiny-ImageNet copy under {DATA_DIR}")
    pytest.importorskip("PIL")
    return instahide.PublicPool.from_tar(path, limit=400, progress=False)


def check_cross(images, labels, pool, encoder, keys, rows=None):
    out, soft = encoder.encode(images, labels, keys, rows=rows)
    ref, ref_soft = reference.encode(images, labels, keys, rows=rows, public=pool, sign=encoder.sign, mean=encoder.mean,
                                     std=encoder.std, out_layout=encoder.out_layout, out_dtype=encoder.out_dtype)
    assert_encodings_close(out, ref, encoder.out_dtype)
    if encoder.sign == "flip":
        assert_signs_identical(out, ref, encoder.out_dtype)
    np.testing.assert_allclose(soft, ref_soft, rtol=1e-6, atol=1e-7)
    return out, soft


@pytest.mark.parametrize("options", [dict(), dict(pad=4, hflip=True), dict(sign="abs", out_dtype="float16"),
                                     dict(out_layout="NHWC", out_dtype="bfloat16", sign="none")])
def test_cross_mode_matches_reference_on_mixed_sizes(rng, options):
    pool, _ = mixed_pool(rng)
    images = rng.integers(0, 256, (60, 32, 32, 3), dtype=np.uint8)
    encoder = instahide.Encoder(k=6, private_terms=2, public=pool, patch_size=32, dom=0.3, mean=CIFAR_MEAN,
                                std=CIFAR_STD, **options)
    check_cross(images, rng.integers(0, 10, 60), pool, encoder, encoder.keys(60, 4))


def test_real_cifar_with_tiny_imagenet_pool(cifar_test, tiny_imagenet_pool):
    images, labels = cifar_test
    pool = tiny_imagenet_pool
    assert len(pool) == 400 and (pool.sizes == 40).all()  # 64x64 images, short side resized to 40
    encoder = instahide.Encoder(k=6, private_terms=2, public=pool, patch_size=32, dom=0.3, mean=CIFAR_MEAN,
                                std=CIFAR_STD)
    keys = encoder.keys(len(images), 0)
    check_cross(images, labels, pool, encoder, keys, rows=np.arange(0, len(images), 5))


def test_public_keys(rng):
    pool, _ = mixed_pool(rng)
    encoder = instahide.Encoder(k=6, private_terms=2, public=pool, patch_size=(32, 30), dom=0.3, pad=3, hflip=True)
    keys = encoder.keys(2000, 7)
    public = keys.index[:, 2:]
    assert public.min() >= 0 and public.max() < len(pool)
    assert len(np.unique(public)) == len(pool)  # uniform over the pool: every image drawn
    room = pool.sizes[public] - np.array([32, 30])
    assert (keys.offset[:, 2:] >= 0).all() and (keys.offset[:, 2:] <= room).all()  # every patch inside its image
    assert (keys.offset[:, 2:] == room).any() and (keys.offset[:, 2:] == 0).any()
    assert not keys.flip[:, 2:].any()
    assert (keys.lam[:, :2].sum(axis=1) >= 0.3 - 1e-6).all() and keys.lam.max() <= 0.65 + 1e-6
    for t in (1,):  # private partner slots stay permutations
        assert np.array_equal(np.sort(keys.index[:, t]), np.arange(2000))


def test_labels_come_from_private_terms_only(rng):
    pool, _ = mixed_pool(rng)
    images = rng.integers(0, 256, (30, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 30)
    encoder = instahide.Encoder(k=6, private_terms=2, public=pool, patch_size=32, dom=0.3)
    keys = encoder.keys(30, 0)
    _, soft = encoder.encode(images, labels, keys)
    np.testing.assert_allclose(soft.sum(axis=1), keys.lam[:, :2].sum(axis=1), rtol=1e-6)
    renormalized = instahide.Encoder(k=6, private_terms=2, public=pool, patch_size=32, renormalize_labels=True,
                                     key=encoder.key)
    _, soft = renormalized.encode(images, labels, keys)
    np.testing.assert_allclose(soft.sum(axis=1), 1, rtol=1e-6)


def test_pool_save_load_and_statistics(rng, tmp_path):
    pool, images = mixed_pool(rng)
    pool.save(tmp_path / "pool.npz")
    loaded = instahide.PublicPool.load(tmp_path / "pool.npz")
    for name in ("pixels", "offsets", "sizes", "mean", "std"):
        assert np.array_equal(getattr(pool, name), getattr(loaded, name))
    assert all(np.array_equal(loaded.image(i), images[i]) for i in range(len(images)))
    values = np.concatenate([im.reshape(-1, 3) for im in images]) / 255
    np.testing.assert_allclose(pool.mean, values.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(pool.std, values.std(axis=0), rtol=1e-5)
    np.savez(tmp_path / "other.npz", pixels=pool.pixels)
    with pytest.raises(ValueError, match="not an instahide public pool"):
        instahide.PublicPool.load(tmp_path / "other.npz")


def test_pool_resizes_short_side_and_converts_grayscale(rng):
    pool = instahide.PublicPool.from_images([rng.integers(0, 256, (64, 96, 3), dtype=np.uint8),
                                             rng.integers(0, 256, (80, 50), dtype=np.uint8)], progress=False)
    assert pool.sizes.tolist() == [[40, 60], [64, 40]] and pool.channels == 3
    gray = pool.image(1)
    assert np.array_equal(gray[..., 0], gray[..., 1])


def test_pool_bad_inputs(rng):
    with pytest.raises(ValueError, match="empty"):
        instahide.PublicPool.from_images([], progress=False)
    with pytest.raises(TypeError, match="uint8"):
        instahide.PublicPool.from_images([np.zeros((40, 40, 3), np.float32)], progress=False)
    with pytest.raises(ValueError, match="channels"):
        instahide.PublicPool.from_images([np.zeros((40, 40, 3), np.uint8), np.zeros((40, 40, 4), np.uint8)],
                                         short_side=None, progress=False)
    with pytest.raises(ValueError, match="std > 0"):  # a constant pool cannot be normalized
        instahide.PublicPool.from_images([np.zeros((40, 40, 3), np.uint8)], short_side=None, progress=False)
    noise = lambda h, w, c=3: rng.integers(0, 256, (h, w, c), dtype=np.uint8)  # noqa: E731
    small = instahide.PublicPool.from_images([noise(40, 40), noise(20, 40)], short_side=None, progress=False)
    with pytest.raises(ValueError, match="smaller than"):
        instahide.Encoder(k=4, private_terms=2, public=small, patch_size=32)
    gray_pool = instahide.PublicPool.from_images([noise(40, 40, 1)], short_side=None, progress=False)
    encoder = instahide.Encoder(k=4, private_terms=2, public=gray_pool, patch_size=32)
    with pytest.raises(ValueError, match="channels"):
        encoder.encode(np.zeros((4, 32, 32, 3), np.uint8), np.zeros(4, np.int64), encoder.keys(4, 0))
    pool, _ = mixed_pool(rng)
    with pytest.raises(ValueError, match="private_terms"):
        instahide.Encoder(k=4, public=pool, patch_size=32)
    with pytest.raises(ValueError, match="patch_size"):
        instahide.Encoder(k=4, private_terms=2, public=pool)
    with pytest.raises(ValueError, match="public pool"):
        instahide.Encoder(k=4, private_terms=2)
    encoder = instahide.Encoder(k=4, private_terms=2, public=pool, patch_size=32)
    with pytest.raises(ValueError, match="patch_size"):
        encoder.encode(np.zeros((4, 30, 30, 3), np.uint8), np.zeros(4, np.int64), encoder.keys(4, 0))
    with pytest.raises(ValueError, match="needs the public pool"):
        instahide.Encoder(k=4).encode(np.zeros((4, 32, 32, 3), np.uint8), np.zeros(4, np.int64), encoder.keys(4, 0))


def test_sift_filter_rejects_flat_images_and_keeps_textured_ones(tiny_imagenet_pool):
    pytest.importorskip("cv2")
    import io
    import tarfile

    from PIL import Image

    from instahide.pool import sift_keypoints

    with tarfile.open(DATA_DIR / "tiny-imagenet-val.tar") as tar:
        members = sorted((m for m in tar.getmembers() if m.name.endswith(".JPEG")), key=lambda m: m.name)[:30]
        photos = [np.asarray(Image.open(io.BytesIO(tar.extractfile(m).read())).convert("RGB")) for m in members]
    textured = max(photos, key=sift_keypoints)
    assert sift_keypoints(textured) > 40
    flat = np.full((64, 64, 3), 120, np.uint8)
    smooth = np.repeat(np.repeat(np.linspace(0, 255, 64, dtype=np.uint8)[None, :, None], 64, 0), 3, 2)
    pool = instahide.PublicPool.from_images([flat, textured, smooth], min_keypoints=40, progress=False)
    assert pool.build_report == {"images": 3, "kept": 1, "min_keypoints": 40}
    assert pool.sizes.tolist() == [[40, 40]]  # filtered at 64x64, then resized
    with pytest.raises(ValueError, match="no image has more than"):
        instahide.PublicPool.from_images([flat, smooth], min_keypoints=40, progress=False)
    counts = [0, 50]
    custom = instahide.PublicPool.from_images([textured, textured], min_keypoints=10, keypoints=lambda im: counts.pop(),
                                              progress=False)
    assert len(custom) == 1  # the detector is configurable


def test_pool_from_patches_filters_each_window_at_source_resolution(rng):
    # the detector sees each window at the source's resolution, before scaling: count its
    # bright pixels, so a window's fate is known from the image
    images = [rng.integers(0, 128, (64, 64, 3), dtype=np.uint8) for _ in range(6)]
    images[1] += 128  # every window of image 1 passes, no window of the others:
    images[4][:32] += 128  # image 4's windows (51 rows) hold at most 32 bright rows
    seen = []

    def bright_rows(window):
        seen.append(window.shape)
        return int((window[:, 0, 0] >= 128).sum())

    pool = instahide.PublicPool.from_patches(images, window=51, size=32, per_image=3, min_keypoints=40,
                                             keypoints=bright_rows, rng=np.random.default_rng(1), progress=False)
    assert set(seen) == {(51, 51, 3)} and len(seen) == 18
    assert len(pool) == 3 and pool.sizes.tolist() == [[32, 32]] * 3  # image 1's three windows, scaled
    assert (pool.pixels >= 128).all()
    assert pool.build_report == {"images": 6, "windows": 18, "kept": 3, "min_keypoints": 40, "window": 51, "size": 32}
    # window positions follow the generator: same seed, same patches
    textured = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(4)]
    first, second = (instahide.PublicPool.from_patches(textured, 40, 32, min_keypoints=None,
                                                       rng=np.random.default_rng(5), progress=False) for _ in range(2))
    assert np.array_equal(first.pixels, second.pixels) and len(first) == 4
    unscaled = instahide.PublicPool.from_patches(textured, 32, 32, min_keypoints=None, rng=np.random.default_rng(5),
                                                 progress=False)
    assert any((unscaled.image(0) == textured[0][y:y + 32, x:x + 32]).all() for y in range(33) for x in range(33))
    with pytest.raises(ValueError, match="no patch kept"):
        instahide.PublicPool.from_patches([images[0]], 51, 32, keypoints=bright_rows, progress=False)
    with pytest.raises(ValueError, match="at least 51x51"):
        instahide.PublicPool.from_patches([np.zeros((40, 64, 3), np.uint8)], 51, 32, progress=False)
    with pytest.raises(ValueError, match="positive"):
        instahide.PublicPool.from_patches(images, 51, 0, progress=False)


def test_pool_from_folder_and_tar(rng, tmp_path):
    from PIL import Image

    (tmp_path / "a" / "b").mkdir(parents=True)
    color = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (64, 48), dtype=np.uint8)
    Image.fromarray(color).save(tmp_path / "a" / "one.png")
    Image.fromarray(gray).save(tmp_path / "a" / "b" / "two.png")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    pool = instahide.PublicPool.from_folder(tmp_path, short_side=None, progress=False)
    assert len(pool) == 2 and pool.sizes.tolist() == [[64, 48], [50, 70]]  # sorted by path: a/b/two before a/one
    assert np.array_equal(pool.image(1), color) and np.array_equal(pool.image(0)[..., 2], gray)
    import tarfile

    with tarfile.open(tmp_path / "images.tar", "w") as tar:
        tar.add(tmp_path / "a", arcname="a")
    from_tar = instahide.PublicPool.from_tar(tmp_path / "images.tar", progress=False)
    assert from_tar.sizes.tolist() == [[53, 40], [40, 56]]  # short side 40, long side truncated
