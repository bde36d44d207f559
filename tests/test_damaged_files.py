"""Damaged files, and files of another kind, handed to the package raise a ValueError that
names the file and what is wrong, never a raw error of zipfile, tarfile, numpy, Pillow or
pickle; a missing file stays FileNotFoundError. Every file is one the package (or Pillow,
numpy, tarfile) wrote in the test, then damaged."""

import json
import pickle
import re
import tarfile

import numpy as np
import pytest

import instahide
from instahide import _files, cli, datasets, shards

# --- damage -----------------------------------------------------------------------------

def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def overwrite_middle(path, count=64):
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + count] = bytes(b ^ 0xFF for b in data[middle:middle + count])
    path.write_bytes(bytes(data))


def empty(path):
    path.write_bytes(b"")


def text(path):
    path.write_text("these are notes, not data\n")


def png(path):
    Image = pytest.importorskip("PIL.Image")
    with open(path, "wb") as f:  # the name keeps its suffix: Pillow must not pick the format from it
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(f, format="PNG")


def npy(path):
    with open(path, "wb") as f:
        np.save(f, np.zeros(3))


def raises(path, phrase):
    """pytest.raises(ValueError) whose message names the file and says `phrase`."""
    return pytest.raises(ValueError, match=f"{re.escape(path.name)}.*(?:{phrase})")


# (damage, phrase) for a file that should be an .npz archive
NPZ_DAMAGE = [(truncate, "truncated or damaged"), (overwrite_middle, "truncated or damaged"),
              (empty, r"an empty file, not an \.npz archive"), (text, r"a text file, not an \.npz archive"),
              (png, r"a PNG image, not an \.npz archive"), (npy, r"an \.npy array, not an \.npz archive")]


# --- Keys.load, PublicPool.load ---------------------------------------------------------

def saved_keys(path):
    instahide.derive_keys(instahide.new_secret_key(), 3, 200, k=4, pad=2, hflip=True).save(path)
    return instahide.Keys.load


def saved_pool(path):
    images = [np.random.default_rng(i).integers(0, 256, (20 + i, 30, 3), dtype=np.uint8) for i in range(6)]
    instahide.PublicPool.from_images(images, short_side=None, progress=False).save(path)
    return instahide.PublicPool.load


@pytest.mark.parametrize("save", [saved_keys, saved_pool])
@pytest.mark.parametrize("damage,phrase", NPZ_DAMAGE)
def test_saved_keys_and_pools_damaged_or_of_another_kind(save, damage, phrase, tmp_path):
    path = tmp_path / "saved.npz"
    load = save(path)
    load(path)  # intact
    damage(path)
    with raises(path, phrase):
        load(path)


@pytest.mark.parametrize("save,member", [(saved_keys, "lam"), (saved_pool, "offsets")])
def test_saved_file_missing_a_member(save, member, tmp_path):
    path = tmp_path / "saved.npz"
    load = save(path)
    with np.load(path) as f:
        arrays = {name: f[name] for name in f.files if name != member}
    np.savez(path, **arrays)
    with raises(path, f"has no member '{member}'"):
        load(path)
    np.savez(path, **{name: a for name, a in arrays.items() if name != "format"})
    with raises(path, "not an instahide"):
        load(path)


@pytest.mark.parametrize("save,member,value,phrase", [
    (saved_keys, "lam", np.zeros((3, 4), np.float32), r"Keys\.lam has shape \(3, 4\)"),
    (saved_keys, "index", np.zeros((200, 4), np.float64), "Keys.index must be a 2-d int64 array"),
    (saved_keys, "epoch", np.array([1, 2]), "member 'epoch' must be one integer"),
    (saved_keys, "private_terms", np.array(9), r"private_terms must be in \[1, k=4\]"),
    (saved_pool, "offsets", np.array([0, 1, 2, 3, 4, 10**9]), "do not fit the pixel buffer"),
    (saved_pool, "channels", np.array(2.5), "member 'channels' must be one integer"),
    (saved_pool, "std", np.zeros(3, np.float32), "std > 0"),
])
def test_saved_file_with_wrong_contents(save, member, value, phrase, tmp_path):
    path = tmp_path / "saved.npz"
    load = save(path)
    with np.load(path) as f:
        arrays = {name: f[name] for name in f.files}
    np.savez(path, **{**arrays, member: value})
    with raises(path, phrase):
        load(path)


@pytest.mark.parametrize("load", [instahide.Keys.load, instahide.PublicPool.load])
def test_a_missing_file_is_not_a_damaged_one(load, tmp_path):
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.npz")


# --- data sets: .npz, .npy, CIFAR-10 python batches -------------------------------------

@pytest.fixture
def arrays():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8), rng.integers(0, 3, 12)


@pytest.mark.parametrize("damage,phrase", NPZ_DAMAGE)
def test_npz_data_set_damaged_or_of_another_kind(arrays, damage, phrase, tmp_path):
    path = tmp_path / "data.npz"
    np.savez(path, images=arrays[0], labels=arrays[1])
    damage(path)
    with raises(path, phrase):
        datasets.load_dataset(str(path))


@pytest.mark.parametrize("change,phrase", [
    (dict(labels=None), r"has no member 'labels' \(an \.npz data set holds images, labels\)"),
    (dict(images=None), "has no member 'images'"),
    (dict(labels=np.zeros(12)), "need class ids"),
    (dict(labels=np.zeros(5, np.int64)), r"labels, got int64 \(5,\)"),
    (dict(images=np.zeros((12, 8, 8), np.uint8)), "expected uint8 images"),
])
def test_npz_data_set_with_wrong_contents(arrays, change, phrase, tmp_path):
    path = tmp_path / "data.npz"
    members = {"images": arrays[0], "labels": arrays[1], **change}
    np.savez(path, **{name: value for name, value in members.items() if value is not None})
    with raises(path, phrase):
        datasets.load_dataset(str(path))


@pytest.mark.parametrize("damage,phrase", [
    (truncate, r"truncated or damaged \.npy array"), (empty, r"an empty file, not an \.npy array"),
    (text, r"a text file, not an \.npy array"), (png, r"a PNG image, not an \.npy array"),
])
@pytest.mark.parametrize("which", ["images", "labels"])
def test_npy_data_set_damaged_or_of_another_kind(arrays, which, damage, phrase, tmp_path):
    paths = {"images": tmp_path / "x.npy", "labels": tmp_path / "y.npy"}
    np.save(paths["images"], arrays[0])
    np.save(paths["labels"], arrays[1])
    damage(paths[which])
    with raises(paths[which], phrase):
        datasets.load_dataset(str(paths["images"]), labels_path=paths["labels"])


def write_batch(path, batch):
    with open(path, "wb") as f:
        pickle.dump(batch, f)


def test_cifar10_python_batches_damaged_or_of_another_kind(tmp_path):
    path = tmp_path / "test_batch"
    rng = np.random.default_rng(0)
    batch = {b"data": rng.integers(0, 256, (10, 3072), dtype=np.uint8), b"labels": list(range(10))}
    write_batch(path, batch)
    images, labels = datasets.load_pickle_batches(tmp_path, "test")
    assert images.shape == (10, 32, 32, 3) and labels.tolist() == list(range(10))
    truncate(path)
    with raises(path, "truncated or damaged CIFAR-10 python batch"):
        datasets.load_pickle_batches(tmp_path, "test")
    empty(path)
    with raises(path, "truncated or damaged CIFAR-10 python batch"):
        datasets.load_pickle_batches(tmp_path, "test")
    for other in ([1, 2, 3], {b"data": np.zeros((10, 100), np.uint8), b"labels": list(range(10))},
                  {b"data": batch[b"data"], b"labels": [0]}):
        write_batch(path, other)
        with raises(path, "not a CIFAR-10 python batch"):
            datasets.load_pickle_batches(tmp_path, "test")


# --- image folders and tars -------------------------------------------------------------

def write_images(folder, classes=("cat", "dog"), per_class=3, suffix=".png"):
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    for name in classes:
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / name / f"{i}{suffix}")


UNKNOWN_IMAGE = r"cannot be decoded \(not an image Pillow knows\)"


@pytest.mark.parametrize("damage,phrase", [
    (truncate, "cannot be decoded"), (empty, UNKNOWN_IMAGE), (text, UNKNOWN_IMAGE), (npy, UNKNOWN_IMAGE),
])
@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_image_folder_with_a_damaged_image(damage, phrase, suffix, tmp_path):
    folder = tmp_path / "images"
    write_images(folder, suffix=suffix)
    assert datasets.load_image_folder(folder)[0].shape == (6, 16, 16, 3)
    damage(folder / "dog" / f"1{suffix}")
    match = f"images: image 'dog/1{re.escape(suffix)}' {phrase}"
    with pytest.raises(ValueError, match=match):
        datasets.load_image_folder(folder)
    with pytest.raises(ValueError, match=match):
        instahide.PublicPool.from_folder(folder, progress=False)


def make_tar(tmp_path, mode="w", name="images.tar"):
    """A class tar of train/<class>/<i>.png, laid out as the CIFAR-10 copy, and its members."""
    write_images(tmp_path / "train", classes=datasets.CIFAR10_CLASSES[:2])
    path = tmp_path / name
    with tarfile.open(path, mode) as tar:
        tar.add(tmp_path / "train", arcname="train")
    with tarfile.open(path) as tar:
        return path, tar.getmembers()


def member(members, name):
    return next(m for m in members if m.name == name)


TAR_READERS = [datasets.load_class_tar, lambda path: instahide.PublicPool.from_tar(path, progress=False)]


@pytest.mark.parametrize("read", TAR_READERS)
@pytest.mark.parametrize("damage,phrase", [
    (truncate, "truncated"), (empty, r"not a tar archive \(an empty file\)"),
    (text, r"not a tar archive \(a text file\)"), (png, r"not a tar archive \(a PNG image\)"),
    (npy, r"not a tar archive \(an \.npy array\)"),
])
def test_tar_damaged_or_of_another_kind(read, damage, phrase, tmp_path):
    path, _ = make_tar(tmp_path)
    assert len(read(path)) in (6, 2)  # (images, labels) or a pool of 6
    damage(path)
    with raises(path, phrase):
        read(path)


@pytest.mark.parametrize("read", TAR_READERS)
def test_tar_with_a_damaged_header_or_image(read, tmp_path):
    path, members = make_tar(tmp_path)
    data = bytearray(path.read_bytes())
    header = member(members, "train/automobile/1.png").offset
    original = bytes(data)
    data[header:header + 100] = b"x" * 100  # its name and checksum: tarfile would end the listing here
    path.write_bytes(bytes(data))
    with raises(path, f"damaged tar archive \\(unreadable header at byte {header}"):
        read(path)
    image = member(members, "train/airplane/2.png")
    data = bytearray(original)
    data[image.offset_data + 40:image.offset_data + image.size] = bytes(image.size - 40)
    path.write_bytes(bytes(data))
    with raises(path, "image 'train/airplane/2.png' cannot be decoded"):
        read(path)
    last = max(members, key=lambda m: m.offset_data)
    path.write_bytes(original[:last.offset_data + -(-last.size // 512) * 512])  # ends after a member
    with raises(path, "truncated tar archive .*without the end-of-archive marker"):
        read(path)


@pytest.mark.parametrize("damage", [truncate, overwrite_middle])
def test_compressed_tar_damaged(damage, tmp_path):
    path, _ = make_tar(tmp_path, "w:gz", "images.tar.gz")
    assert len(datasets.load_class_tar(path)[0]) == 6
    damage(path)
    with raises(path, "truncated|damaged|cannot be decoded"):
        datasets.load_class_tar(path)


def test_cifar10_tar_damaged_and_its_cache_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path, _ = make_tar(tmp_path, name="cifar10-test.tar")
    images, labels = datasets.load_cifar10("test", data_dir=tmp_path)
    (cache,) = (tmp_path / "cache" / "instahide").glob("*.npz")
    truncate(cache)  # a damaged cache is decoded again and replaced
    again, again_labels = datasets.load_cifar10("test", data_dir=tmp_path)
    assert np.array_equal(again, images) and np.array_equal(again_labels, labels)
    assert _files.read_npz(cache, "a cache", ("images", "labels"))["images"].shape == images.shape
    text(path)
    with raises(path, "not a tar archive"):
        datasets.load_cifar10("test", data_dir=tmp_path, cache=False)


# --- shards: manifest.json and the key file ---------------------------------------------

@pytest.fixture
def encoded(arrays, tmp_path):
    """(run again, the output folder): a finished `encode_to_shards` run of 3 shards."""
    key = bytes(range(32))
    out = tmp_path / "out"

    def run():
        return shards.encode_to_shards(*arrays, instahide.Encoder(k=2, key=key), out, shard_size=5, progress=False)

    run()
    return run, out


@pytest.mark.parametrize("damage,phrase", [
    (truncate, "truncated or damaged, not valid JSON"), (empty, "not valid JSON"), (png, "not valid JSON"),
    (lambda path: path.write_text("[1, 2]"), "not a manifest of instahide encode"),
    (lambda path: path.write_text('{"parameters": 1}'), "not a manifest of instahide encode"),
])
def test_manifest_damaged_or_of_another_kind(encoded, damage, phrase):
    run, out = encoded
    damage(out / "manifest.json")
    with raises(out / "manifest.json", phrase):
        run()


@pytest.mark.parametrize("edit", [
    lambda shards: shards.pop(),
    lambda shards: shards.append(dict(shards[0])),
    lambda shards: shards[1].update(file="../elsewhere.npz"),
    lambda shards: shards[1].update(sha256="not a digest"),
    lambda shards: shards[2].pop("count"),
    lambda shards: shards.__setitem__(0, "shard-00000.npz"),
])
def test_manifest_with_a_damaged_shard_list(encoded, edit):
    run, out = encoded
    manifest = json.loads((out / "manifest.json").read_text())
    edit(manifest["shards"])
    (out / "manifest.json").write_text(json.dumps(manifest))
    with raises(out / "manifest.json", "damaged shard list"):
        run()


def test_damaged_shards_are_encoded_again(encoded):
    run, out = encoded
    before = (out / "shard-00001.npz").read_bytes()
    overwrite_middle(out / "shard-00001.npz")
    run()
    assert (out / "shard-00001.npz").read_bytes() == before


def test_key_file_of_another_size(tmp_path):
    path = tmp_path / "secret.key"
    path.write_bytes(bytes(31))
    with raises(path, "a key file holds 32 bytes, this one 31"):
        shards.key_from_file(path)


# --- the command line: an error line naming the file, exit status 1 ---------------------

def test_cli_reports_damaged_inputs(arrays, tmp_path, capsys):
    data = tmp_path / "data.npz"
    np.savez(data, images=arrays[0], labels=arrays[1])
    out = tmp_path / "out"
    args = ["encode", str(data), "--out", str(out), "--quiet", "--key-file", str(tmp_path / "k")]
    assert cli.main(args) == 0
    manifest = (out / "manifest.json").read_text()
    (out / "manifest.json").write_text(manifest[:len(manifest) // 2])
    assert cli.main(args) == 1
    assert f"{out / 'manifest.json'}: truncated or damaged, not valid JSON" in capsys.readouterr().err
    truncate(data)
    assert cli.main(args) == 1
    assert f"instahide encode: error: {data}: truncated or damaged" in capsys.readouterr().err
    np.savez(data, images=arrays[0], labels=arrays[1])
    public = tmp_path / "public.tar"
    text(public)
    assert cli.main(args[:3] + [str(tmp_path / "out2"), "--quiet", "--mode", "cross", "--public", str(public)]) == 1
    assert f"{public}: not a tar archive (a text file)" in capsys.readouterr().err


def test_train_resume_from_a_damaged_checkpoint(tmp_path, capsys):
    pytest.importorskip("torch")
    write_images(tmp_path / "images", per_class=4)
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"PK\x03\x04 cut short")
    images = str(tmp_path / "images")
    assert cli.main(["train", "--train", images, "--test", images, "--out", str(out), "--resume", "--model",
                     "small_cnn", "--epochs", "1", "--device", "cpu", "--quiet"]) == 1
    assert f"{out / 'checkpoint.pt'}: cannot resume from it (damaged" in capsys.readouterr().err
