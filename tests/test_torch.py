"""instahide.torch: epoch-keyed batches (also in DataLoader workers), batch transform, loss, inference."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import instahide  # noqa: E402
from instahide.keys import derive_keys  # noqa: E402
from instahide.torch import EncodedBatches, InstaHideLoader, InstaHideMix, predict, soft_cross_entropy  # noqa: E402


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (300, 16, 16, 3), dtype=np.uint8), rng.integers(0, 10, 300)


def test_soft_cross_entropy_equals_cross_entropy_on_one_hot():
    logits = torch.randn(8, 5)
    labels = torch.randint(0, 5, (8,))
    expected = torch.nn.functional.cross_entropy(logits, labels)
    assert torch.allclose(soft_cross_entropy(logits, torch.nn.functional.one_hot(labels, 5).float()), expected)


def test_batches_cover_the_epoch_once_and_match_the_encoder(data):
    images, labels = data
    encoder = instahide.Encoder(k=4, pad=4, hflip=True)
    batches = EncodedBatches(images, labels, encoder, batch_size=64)
    batches.set_epoch(3)
    keys, order = batches.epoch_keys()
    assert np.array_equal(np.sort(order), np.arange(300)) and len(batches) == 5
    for b in range(len(batches)):
        x, y = batches[b]
        ex, ey = encoder.encode(images, labels, keys, rows=order[b * 64:(b + 1) * 64])
        assert torch.equal(x, torch.from_numpy(ex)) and torch.equal(y, torch.from_numpy(ey))
    assert np.array_equal(keys.lam, encoder.keys(300, 3).lam)
    batches.set_epoch(4)
    assert not np.array_equal(batches.epoch_keys()[1], order)  # re-keyed and reshuffled
    with pytest.raises(IndexError):
        batches[5]


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_dataloader_workers_give_the_same_batches(data, method):
    import multiprocessing
    import warnings

    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {method} here")
    images, labels = data
    encoder = instahide.Encoder(k=3, pad=2)
    single = [(x.clone(), y.clone()) for x, y in InstaHideLoader(images, labels, encoder, batch_size=50, start_epoch=7)]
    with warnings.catch_warnings():  # Python >= 3.12 warns about fork in a threaded process
        warnings.simplefilter("ignore", DeprecationWarning)
        loader = InstaHideLoader(images, labels, encoder, batch_size=50, start_epoch=7, num_workers=2,
                                 multiprocessing_context=method)
        workers = list(loader)
    assert len(workers) == len(single) == 6
    for (x, y), (wx, wy) in zip(single, workers, strict=True):
        assert torch.equal(x, wx) and torch.equal(y, wy)
    assert loader.epoch == 8


def test_loader_rekeys_every_epoch(data):
    images, labels = data
    loader = InstaHideLoader(images, labels, instahide.Encoder(k=4), batch_size=100, shuffle=False)
    first = next(iter(loader))[0]
    second = next(iter(loader))[0]
    assert first.shape == (100, 3, 16, 16) and not torch.equal(first, second)


def test_batch_transform(data):
    images, labels = data
    mix = InstaHideMix(instahide.Encoder(k=4))
    x, y = mix(torch.from_numpy(images[:32]), torch.from_numpy(labels[:32]))
    x2, _ = mix(torch.from_numpy(images[:32]), torch.from_numpy(labels[:32]))
    assert x.shape == (32, 3, 16, 16) and y.shape[0] == 32
    assert torch.allclose(y.sum(dim=1), torch.ones(32)) and not torch.equal(x, x2) and mix.calls == 2


def test_inference_averages_repeats_with_a_dominant_own_image(data):
    images, _ = data
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 10))
    encoder = instahide.Encoder(k=4)
    probabilities = predict(model, images[:40], encoder, num_classes=10, repeats=3, own_at_least=0.5, batch_size=16)
    assert probabilities.shape == (40, 10)
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(40))
    keys = derive_keys(encoder.key, 0, 40, k=4, own_at_least=0.5)
    assert (keys.lam[:, 0] >= 0.5).all() and keys.lam.max() <= 0.65 + 1e-6
    with pytest.raises(ValueError, match="own_at_least"):
        derive_keys(encoder.key, 0, 40, k=4, own_at_least=0.7)


def _rank_batches(rank, world_size, init_file, key, images, labels, out_dir):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        batches = EncodedBatches(images, labels, instahide.Encoder(k=4, pad=2, hflip=True, key=key), batch_size=32)
        batches.set_epoch(5)
        torch.save([batches[i] for i in range(len(batches))], f"{out_dir}/rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_distributed_ranks_together_encode_the_single_process_epoch(data, tmp_path):
    """2 processes (gloo on CPU): every rank derives the same keys and encodes its share."""
    import torch.multiprocessing as mp

    images, labels = data
    key = instahide.new_secret_key()
    mp.spawn(_rank_batches, args=(2, str(tmp_path / "init"), key, images, labels, str(tmp_path)), nprocs=2, join=True)
    single = EncodedBatches(images, labels, instahide.Encoder(k=4, pad=2, hflip=True, key=key), batch_size=32)
    single.set_epoch(5)
    shards = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert len(shards[0]) + len(shards[1]) == len(single) == 10
    for b in range(len(single)):
        x, y = shards[b % 2][b // 2]
        ex, ey = single[b]
        assert torch.equal(x, ex) and torch.equal(y, ey)
