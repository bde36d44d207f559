"""The CUDA kernel against the CPU core and the numpy reference. The GPU tests skip where no
CUDA device is usable; the build tests always run."""

import itertools
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import instahide
from instahide import reference

from conftest import CIFAR_MEAN, CIFAR_STD
from helpers import assert_encodings_close, assert_signs_identical

INFO = instahide.build_info()


def test_cuda_objects_compiled_when_nvcc_is_present():
    if os.environ.get("INSTAHIDE_CUDA") == "off":
        pytest.skip("built with INSTAHIDE_CUDA=off")
    if shutil.which("nvcc") is None and not INFO["cuda_compiled"]:
        pytest.skip("no nvcc on this machine")
    assert INFO["cuda_compiled"], "nvcc is on PATH but the CUDA kernels were not compiled in"
    assert INFO["cuda_architectures"] == ",".join(configured_architectures())


def configured_architectures() -> list[str]:
    """The GPU architectures this build was asked for (docs/building.md): those given in
    CMAKE_ARGS, else CMakeLists.txt's default."""
    given = re.search(r"-DINSTAHIDE_CUDA_ARCHITECTURES=(\S+)", os.environ.get("CMAKE_ARGS", ""))
    if given:
        return given.group(1).strip("\"'").split(";")
    cmake_lists = (Path(__file__).resolve().parents[1] / "CMakeLists.txt").read_text()
    return re.search(r'set\(INSTAHIDE_CUDA_ARCHITECTURES "([^"]+)"', cmake_lists).group(1).split(";")


def test_build_info_reports_the_device_state():
    assert INFO["cpu_cores"] >= 1
    if not INFO["cuda_compiled"]:
        assert (INFO["cuda_devices"], INFO["cuda_status"]) == (0, "not compiled with CUDA")
    elif INFO["cuda_devices"] == 0:  # the status says why: no driver, or a driver without devices
        assert re.search(r"CUDA unavailable: |no CUDA device", INFO["cuda_status"]), INFO["cuda_status"]
    else:
        assert f"{INFO['cuda_devices']} device(s)" in INFO["cuda_status"]
        torch = pytest.importorskip("torch")
        if torch.cuda.is_available():
            assert INFO["cuda_devices"] == torch.cuda.device_count()


@pytest.mark.skipif(not INFO["cuda_compiled"] or INFO["cuda_devices"] > 0, reason="needs a CUDA build without a GPU")
def test_cuda_errors_become_python_exceptions_without_a_device():
    with pytest.raises(RuntimeError, match="cuda"):
        source = instahide._core.ImageSource.device(pointer=1, pixel=0, shape=(1, 3, 4, 4), strides=(48, 16, 4, 1),
                                                    scale=[1.0] * 3, shift=[0.0] * 3)
        instahide._core.encode_cuda(sources=[source], private_terms=1, rows=1, k=1, index=8, lam=8, offset=8, flip=8,
                                    row_id=8, mask_key=bytes(32), epoch=0, sign=0, out=8, out_type=0,
                                    out_channels_last=False, out_height=4, out_width=4, device=0, stream=0)


torch = pytest.importorskip("torch")
needs_gpu = pytest.mark.skipif(not (INFO["cuda_devices"] > 0 and torch.cuda.is_available()),
                               reason="no usable CUDA device")


def test_device_rows_are_checked_once_per_tensor_they_are_views_of(monkeypatch):
    # The check of row ids on a GPU (device-agnostic code, run here on CPU tensors): one
    # reduction per base tensor and version, whichever slices of it come.
    from instahide._cuda import _CheckedRows

    reductions = []
    aminmax = torch.aminmax
    monkeypatch.setattr(torch, "aminmax", lambda x: reductions.append(x.numel()) or aminmax(x))
    checked = _CheckedRows(size=2)
    order = torch.randperm(100)
    for start in range(0, 100, 10):
        checked.check(order[start:start + 10], 100)
    assert reductions == [100]
    checked.check(order[5:], 90 + 10)
    checked.check(order, 100)
    assert reductions == [100]
    checked.check(order[:10], 101)  # another row count: checked again
    assert reductions == [100, 100]
    order[50] = 100  # in place, through the base: its views are checked again, whole
    with pytest.raises(ValueError, match=re.escape("[0, 100), got values in [0, 100] (checked whole")):
        checked.check(order[:10], 100)
    order[50] = 3
    checked.check(order[:10], 100)
    assert reductions == [100, 100, 100, 100]
    other, third = torch.arange(5), torch.arange(6)
    checked.check(other, 5)
    checked.check(third, 6)  # the cache holds 2 tensors: `order` is gone, checked again
    checked.check(order[:10], 100)
    assert reductions == [100, 100, 100, 100, 5, 6, 100]
    with pytest.raises(ValueError, match=re.escape("got values in [-2, 4]")):
        checked.check(torch.tensor([4, -2]), 5)  # not a view: no "checked whole"
    checked.check(torch.empty(0, dtype=torch.int64), 0)  # nothing to reduce


def test_rows_on_a_device_with_host_images_are_a_clear_error():
    encoder = instahide.Encoder(k=2)
    with pytest.raises(TypeError, match="rows are on meta but the images on the host"):
        encoder.encode(np.zeros((4, 3, 8, 8), np.uint8), np.zeros(4, np.int64), encoder.keys(4, 0),
                       rows=torch.empty(2, dtype=torch.int64, device="meta"))


def encode_three_ways(images, labels, encoder, keys, rows=None):
    """(CUDA output on the host, CPU output, reference output)."""
    gpu, gpu_soft = encoder.encode(images.cuda(), labels.cuda(), keys, rows=rows)
    torch.cuda.synchronize()
    cpu, cpu_soft = encoder.encode(images, labels, keys, rows=rows)
    ref, _ = reference.encode(images.numpy(), labels.numpy(), keys, rows=rows, sign=encoder.sign, mean=encoder.mean,
                              std=encoder.std, layout=encoder.layout, out_layout=encoder.out_layout,
                              out_dtype=encoder.out_dtype)
    to_numpy = (lambda t: t.view(torch.int16).cpu().numpy().view(np.uint16)) if encoder.out_dtype == "bfloat16" else (
        lambda t: t.cpu().numpy())
    np.testing.assert_allclose(gpu_soft.cpu().numpy(), cpu_soft.numpy(), rtol=1e-6)
    return to_numpy(gpu), to_numpy(cpu), ref


@needs_gpu
@pytest.mark.parametrize("layout,out_layout,dtype",
                         list(itertools.product(["NHWC", "NCHW"], ["NCHW", "NHWC"], ["uint8", "float32"])))
@pytest.mark.parametrize("out_dtype", ["float32", "float16", "bfloat16"])
def test_cuda_matches_cpu_and_reference(layout, out_layout, dtype, out_dtype):
    rng = np.random.default_rng()
    x = rng.integers(0, 256, (64, 20, 18, 3)).astype(dtype)
    if layout == "NCHW":
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    images, labels = torch.from_numpy(x), torch.from_numpy(rng.integers(0, 10, 64))
    for options in (dict(k=4), dict(k=3, pad=4, hflip=True, sign="abs"), dict(k=6, distinct=True, sign="none")):
        encoder = instahide.Encoder(mean=CIFAR_MEAN, std=CIFAR_STD, out_dtype=out_dtype, layout=layout,
                                    out_layout=out_layout, **options)
        keys = encoder.keys(64, int(rng.integers(0, 2**32)))
        gpu, cpu, ref = encode_three_ways(images, labels, encoder, keys, rows=rng.permutation(64)[:50])
        assert_encodings_close(gpu, cpu, out_dtype)
        assert_encodings_close(gpu, ref, out_dtype)
        if encoder.sign == "flip":
            assert_signs_identical(gpu, ref, out_dtype)


@needs_gpu
@pytest.mark.parametrize("k", range(1, 9))
def test_cuda_every_k_on_real_images(cifar_test, k):
    images, labels = (torch.from_numpy(a) for a in cifar_test)
    encoder = instahide.Encoder(k=k, mean=CIFAR_MEAN, std=CIFAR_STD, pad=4, hflip=True)
    keys = encoder.keys(len(images), k)
    gpu, cpu, ref = encode_three_ways(images, labels, encoder, keys, rows=np.arange(0, len(images), 7))
    assert_encodings_close(gpu, cpu, "float32")
    assert_encodings_close(gpu, ref, "float32")
    assert_signs_identical(gpu, ref, "float32")


@needs_gpu
def test_cuda_mask_is_bit_exact():
    images = torch.randint(0, 256, (300, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (300,))
    key = instahide.new_secret_key()
    keys = instahide.Encoder(k=4, key=key).keys(300, 5)
    signed = instahide.Encoder(k=4, key=key).encode(images.cuda(), labels, keys)[0].cpu().numpy()
    plain = instahide.Encoder(k=4, key=key, sign="none").encode(images.cuda(), labels, keys)[0].cpu().numpy()
    mask = instahide.mask(keys.mask_key, keys.epoch, np.arange(300), (3, 32, 32))
    assert np.array_equal(signed.view(np.uint32), plain.view(np.uint32) ^ np.where(mask < 0, np.uint32(1 << 31), 0))


@needs_gpu
def test_cuda_non_contiguous_inputs():
    base = torch.randint(0, 256, (40, 40, 36, 3), dtype=torch.uint8)
    labels = torch.randint(0, 10, (20,))
    view = base[::2, 3:35, 2:34]
    encoder = instahide.Encoder(k=3, pad=2, hflip=True)
    keys = encoder.keys(20, 0)
    gpu, _ = encoder.encode(base.cuda()[::2, 3:35, 2:34], labels, keys)
    cpu, _ = encoder.encode(view, labels, keys)
    assert_encodings_close(gpu.cpu().numpy(), cpu.numpy(), "float32")


@needs_gpu
def test_cuda_runs_on_the_current_stream():
    images = torch.randint(0, 256, (4096, 32, 32, 3), dtype=torch.uint8, device="cuda")
    labels = torch.randint(0, 10, (4096,))
    encoder = instahide.Encoder(k=4)
    keys = encoder.keys(4096, 0)
    expected, _ = encoder.encode(images, labels, keys)
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        torch.cuda._sleep(50_000_000)  # keep the side stream busy: a wrong stream would race ahead
        out, _ = encoder.encode(images, labels, keys)
    side.synchronize()
    assert torch.equal(out, expected)


@needs_gpu
def test_cuda_batches_queued_back_to_back_keep_their_own_rows():
    # Row ids travel on a side stream: each batch's must reach its own kernel, and their memory
    # must not be reused while a queued kernel may still read it.
    n = 2048
    images = torch.randint(0, 256, (n, 16, 16, 3), dtype=torch.uint8, device="cuda")
    labels = torch.randint(0, 10, (n,), device="cuda")
    encoder = instahide.Encoder(k=4, num_classes=10)
    keys = encoder.keys(n, 1)
    batches = np.array_split(np.random.default_rng(0).permutation(n), 16)
    torch.cuda._sleep(50_000_000)  # the kernels queue up behind this while the uploads run
    outputs = [encoder.encode(images, labels, keys, rows=b) for b in batches]
    for b, (x, y) in zip(batches, outputs, strict=True):
        x_cpu, y_cpu = encoder.encode(images.cpu(), labels.cpu(), keys, rows=b)
        assert_encodings_close(x.cpu().numpy(), x_cpu.numpy(), "float32")
        np.testing.assert_array_equal(y.cpu().numpy(), y_cpu.numpy())


@needs_gpu
def test_cuda_rows_on_the_device_give_the_bits_of_host_rows():
    # Row ids as slices of an epoch order uploaded once: no per-batch copy, the same encoding,
    # with class ids, soft labels and class ids on the host (mixed there), and an empty batch.
    rng = np.random.default_rng()
    n = 500
    images = torch.from_numpy(rng.integers(0, 256, (n, 32, 32, 3), np.uint8)).cuda()
    labels = torch.from_numpy(rng.integers(0, 10, n)).cuda()
    encoder = instahide.Encoder(k=4, pad=4, hflip=True, num_classes=10, layout="NHWC", mean=CIFAR_MEAN, std=CIFAR_STD)
    keys = encoder.keys(n, int(rng.integers(0, 2**32)))
    order = rng.permutation(n)
    order_on_device = torch.from_numpy(order).cuda()
    soft_labels = torch.nn.functional.one_hot(labels, 10).float() * 0.5 + 0.05
    for a, b in ((0, 128), (128, 300), (300, 500), (7, 7)):
        for batch_labels in (labels, soft_labels, labels.cpu()):
            x_host, y_host = encoder.encode(images, batch_labels, keys, rows=order[a:b])
            x_dev, y_dev = encoder.encode(images, batch_labels, keys, rows=order_on_device[a:b])
            assert x_dev.shape == (b - a, 3, 32, 32) and y_dev.is_cuda
            assert torch.equal(x_dev, x_host) and torch.equal(y_dev, y_host)


@needs_gpu
def test_cuda_rows_on_the_device_are_checked():
    images = torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8, device="cuda")
    labels = torch.randint(0, 10, (40,), device="cuda")
    encoder = instahide.Encoder(k=2)
    keys = encoder.keys(40, 0)
    rows = torch.arange(40, device="cuda")
    for bad in (rows.int(), rows.view(4, 10)):
        with pytest.raises(TypeError, match="1-d int64 tensor"):
            encoder.encode(images, labels, keys, rows=bad)
    with pytest.raises(ValueError, match="contiguous"):
        encoder.encode(images, labels, keys, rows=rows[::2])
    with pytest.raises(ValueError, match=re.escape("[0, 40), got values in [0, 40] (checked whole")):
        encoder.encode(images, labels, keys, rows=torch.arange(41, device="cuda")[:10])
    order = torch.randperm(40, device="cuda")
    expected, _ = encoder.encode(images, labels, keys, rows=order[:10].cpu().numpy())
    assert torch.equal(encoder.encode(images, labels, keys, rows=order[:10])[0], expected)
    order[30] = -1  # changed in place: checked again
    with pytest.raises(ValueError, match=re.escape("[-1,")):
        encoder.encode(images, labels, keys, rows=order[:10])
    order[30] = 0
    assert torch.equal(encoder.encode(images, labels, keys, rows=order[:10])[0], expected)
    if torch.cuda.device_count() > 1:
        with pytest.raises(ValueError, match="cuda:1"):
            encoder.encode(images, labels, keys, rows=order.to("cuda:1"))


@needs_gpu
def test_cuda_empty_batch_and_device_guard():
    images = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8, device="cuda")
    encoder = instahide.Encoder(k=2)
    keys = encoder.keys(10, 0)
    out, soft = encoder.encode(images, torch.zeros(10, dtype=torch.int64), keys, rows=np.array([], np.int64))
    assert out.shape == (0, 3, 8, 8) and out.is_cuda
    if torch.cuda.device_count() > 1:
        on_one = images.to("cuda:1")
        before = torch.cuda.current_device()
        out, _ = encoder.encode(on_one, torch.zeros(10, dtype=torch.int64), keys)
        assert out.device.index == 1 and torch.cuda.current_device() == before
        expected, _ = encoder.encode(images, torch.zeros(10, dtype=torch.int64), keys)
        assert torch.equal(out.cpu(), expected.cpu())


@needs_gpu
def test_cuda_bad_inputs():
    encoder = instahide.Encoder(k=2)
    keys = encoder.keys(10, 0)
    with pytest.raises(TypeError, match="uint8 or float32"):
        encoder.encode(torch.zeros((10, 3, 8, 8), dtype=torch.float64, device="cuda"),
                       torch.zeros(10, dtype=torch.int64), keys)
    with pytest.raises(ValueError, match="20 rows|10 rows"):
        encoder.encode(torch.zeros((20, 3, 8, 8), dtype=torch.uint8, device="cuda"),
                       torch.zeros(20, dtype=torch.int64), keys)


@needs_gpu
def test_cupy_arrays_encode_like_torch_tensors():
    cupy = pytest.importorskip("cupy")
    images = np.random.default_rng(0).integers(0, 256, (64, 16, 16, 3), dtype=np.uint8)
    labels = np.random.default_rng(1).integers(0, 10, 64)
    encoder = instahide.Encoder(k=4, pad=2, hflip=True, out_dtype="float16")
    keys = encoder.keys(64, 3)
    out, soft = encoder.encode(cupy.asarray(images), cupy.asarray(labels), keys)
    cupy.cuda.get_current_stream().synchronize()
    expected, expected_soft = encoder.encode(images, labels, keys)
    assert isinstance(out, cupy.ndarray) and out.dtype == np.float16
    assert_encodings_close(out.get(), expected, "float16")
    np.testing.assert_allclose(soft.get(), expected_soft, rtol=1e-6)


@needs_gpu
def test_cuda_cross_mode_with_a_mixed_size_pool():
    rng = np.random.default_rng(0)
    pool = instahide.PublicPool.from_images(
        [rng.integers(0, 256, (int(rng.integers(32, 60)), int(rng.integers(32, 60)), 3), dtype=np.uint8)
         for _ in range(30)],
        short_side=None, progress=False)
    images = torch.from_numpy(rng.integers(0, 256, (80, 32, 32, 3), dtype=np.uint8))
    labels = torch.from_numpy(rng.integers(0, 10, 80))
    encoder = instahide.Encoder(k=6, private_terms=2, public=pool, patch_size=32, dom=0.3, mean=CIFAR_MEAN,
                                std=CIFAR_STD, pad=4, hflip=True)
    keys = encoder.keys(80, 2)
    gpu, gpu_soft = encoder.encode(images.cuda(), labels.cuda(), keys)
    cpu, cpu_soft = encoder.encode(images, labels, keys)
    ref, _ = reference.encode(images.numpy(), labels.numpy(), keys, public=pool, mean=encoder.mean, std=encoder.std)
    assert_encodings_close(gpu.cpu().numpy(), cpu.numpy(), "float32")
    assert_encodings_close(gpu.cpu().numpy(), ref, "float32")
    assert_signs_identical(gpu.cpu().numpy(), ref, "float32")
    np.testing.assert_allclose(gpu_soft.cpu().numpy(), cpu_soft.numpy(), rtol=1e-6)


@needs_gpu
@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("out_dtype,out_layout", [("float32", "NCHW"), ("float16", "NHWC"), ("bfloat16", "NCHW")])
def test_cuda_word_loads_on_real_images_match_the_cpu(cifar_test, layout, out_dtype, out_layout):
    # The kernel's word-wide path (uint8 images) on real images, with crops into the padding
    # and flips, in cross mode with a mixed-size pool, and for planar images.
    rng = np.random.default_rng()
    x = cifar_test[0][:500]
    if layout == "NCHW":
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    images, labels = torch.from_numpy(x).cuda(), torch.from_numpy(cifar_test[1][:500]).cuda()
    pool = instahide.PublicPool.from_images(
        [rng.integers(0, 256, (int(rng.integers(32, 90)), int(rng.integers(32, 90)), 3), dtype=np.uint8)
         for _ in range(40)], short_side=None, progress=False)
    for options in (dict(k=4), dict(k=5, pad=4, hflip=True), dict(k=6, private_terms=2, public=pool, patch_size=32),
                    dict(k=3, pad=7, hflip=True, sign="abs")):
        encoder = instahide.Encoder(mean=CIFAR_MEAN, std=CIFAR_STD, layout=layout, out_dtype=out_dtype,
                                    out_layout=out_layout, **options)
        keys = encoder.keys(500, int(rng.integers(0, 2**32)))
        rows = rng.permutation(500)[:300]
        gpu, gpu_soft = encoder.encode(images, labels, keys, rows=rows)
        cpu, cpu_soft = encoder.encode(images.cpu(), labels.cpu(), keys, rows=rows)
        to_numpy = (lambda t: t.view(torch.int16).numpy().view(np.uint16)) if out_dtype == "bfloat16" else (
            lambda t: t.numpy())
        assert_encodings_close(to_numpy(gpu.cpu()), to_numpy(cpu), out_dtype)
        assert torch.equal(gpu_soft.cpu(), cpu_soft), options


@needs_gpu
def test_cuda_labels_on_the_device_follow_in_place_changes():
    images = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8, device="cuda")
    labels = torch.randint(0, 10, (64,), device="cuda")
    encoder = instahide.Encoder(k=3)
    keys = encoder.keys(64, 0)
    _, soft = encoder.encode(images, labels, keys)
    _, expected = encoder.encode(images.cpu(), labels.cpu(), keys)
    assert soft.is_cuda
    np.testing.assert_allclose(soft.cpu().numpy(), expected.numpy(), rtol=1e-6)
    labels.add_(1).remainder_(10)  # a cached host copy of the old labels must not be reused
    _, soft = encoder.encode(images, labels, keys)
    _, expected = encoder.encode(images.cpu(), labels.cpu(), keys)
    np.testing.assert_allclose(soft.cpu().numpy(), expected.numpy(), rtol=1e-6)


@needs_gpu
@pytest.mark.parametrize("k,private_terms,classes,dtype,renormalize", [
    (4, 4, 10, torch.int64, False), (8, 8, 1000, torch.int32, False), (6, 2, 10, torch.int64, False),
    (3, 3, 7, torch.int16, True), (1, 1, 3, torch.int64, True),
    (4, 4, 10, torch.float32, False), (6, 2, 100, torch.float64, False), (3, 3, 40, torch.float32, True)])
def test_cuda_soft_labels_mixed_by_the_kernel_match_the_host_bit_for_bit(k, private_terms, classes, dtype, renormalize):
    # class ids (integer dtypes) and soft input labels (float dtypes), both mixed by the kernel
    rng = np.random.default_rng(k * 1000 + classes)
    n = 500
    images = torch.from_numpy(rng.integers(0, 256, (n, 3, 8, 8), np.uint8))
    soft_input = dtype.is_floating_point
    labels = torch.from_numpy(rng.dirichlet(np.ones(classes), n) if soft_input else rng.integers(0, classes, n))
    cross = {}
    if private_terms < k:
        pool = instahide.PublicPool.from_images(rng.integers(0, 256, (20, 10, 10, 3), np.uint8), short_side=None,
                                                progress=False)
        cross = {"private_terms": private_terms, "public": pool, "patch_size": 8}
    encoder = instahide.Encoder(k=k, num_classes=classes, renormalize_labels=renormalize, **cross)
    keys = encoder.keys(n, 3)
    rows = rng.permutation(n)[:300]
    _, gpu_soft = encoder.encode(images.cuda(), labels.to(dtype).cuda(), keys, rows=rows)
    _, cpu_soft = encoder.encode(images, labels.to(dtype), keys, rows=rows)
    assert gpu_soft.is_cuda and gpu_soft.dtype == torch.float32 and gpu_soft.shape == (300, classes)
    np.testing.assert_array_equal(gpu_soft.cpu().numpy(), cpu_soft.numpy())


@needs_gpu
def test_cuda_labels_are_checked_on_the_host():
    images = torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8, device="cuda")
    encoder = instahide.Encoder(k=2, num_classes=10)
    keys = encoder.keys(40, 0)
    labels = torch.randint(0, 10, (40,), device="cuda")
    labels[17] = 10
    with pytest.raises(ValueError, match="class id 10"):
        encoder.encode(images, labels, keys)
    labels[17] = -1
    with pytest.raises(ValueError, match=">= 0"):
        encoder.encode(images, labels, keys)
    labels[17] = 3  # fixed in place: the next call sees the new version
    _, soft = encoder.encode(images, labels, keys)
    np.testing.assert_array_equal(soft.cpu().numpy(), encoder.encode(images.cpu(), labels.cpu(), keys)[1].numpy())


@needs_gpu
def test_loader_encodes_a_gpu_resident_set_on_the_gpu():
    from instahide.torch import InstaHideLoader

    images = torch.randint(0, 256, (300, 32, 32, 3), dtype=torch.uint8)
    labels = torch.randint(0, 10, (300,))
    encoder = instahide.Encoder(k=4, pad=4, hflip=True, num_classes=10, layout="NHWC", mean=CIFAR_MEAN, std=CIFAR_STD)
    gpu = list(InstaHideLoader(images.cuda(), labels.cuda(), encoder, batch_size=128))
    cpu = list(InstaHideLoader(images, labels, encoder, batch_size=128))  # the same key: the same epoch
    assert len(gpu) == len(cpu) == 3
    for (x_gpu, y_gpu), (x_cpu, y_cpu) in zip(gpu, cpu, strict=True):
        assert x_gpu.is_cuda and y_gpu.is_cuda
        assert_encodings_close(x_gpu.cpu().numpy(), x_cpu.numpy(), "float32")
        np.testing.assert_allclose(y_gpu.cpu().numpy(), y_cpu.numpy(), rtol=1e-6)
