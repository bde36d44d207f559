"""The core's own thread pool: fork safety (DataLoader workers), concurrent callers, settings."""

import multiprocessing
import threading
import warnings

import numpy as np
import pytest

import instahide


def encode_once(seed_key: bytes):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (256, 16, 16, 3), dtype=np.uint8)
    encoder = instahide.Encoder(k=4, pad=2, hflip=True, key=seed_key)
    out, _ = encoder.encode(images, rng.integers(0, 10, 256), encoder.keys(256, 0))
    return out


def child(key, queue):
    queue.put(encode_once(key).tobytes())


def test_pool_survives_fork():
    """A forked child (as DataLoader workers are) must not wait on the parent's threads."""
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork on this platform")
    key = instahide.new_secret_key()
    expected = encode_once(key)  # the parent's pool now exists
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    process = context.Process(target=child, args=(key, queue))
    with warnings.catch_warnings():  # Python >= 3.12 warns about forking a threaded process: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        process.start()
    result = queue.get(timeout=60)
    process.join(timeout=60)
    assert process.exitcode == 0
    assert result == expected.tobytes()


def test_concurrent_callers_get_correct_results():
    key = instahide.new_secret_key()
    expected = encode_once(key)
    results, errors = [], []

    def work():
        try:
            for _ in range(5):
                results.append(encode_once(key))
        except Exception as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 20
    assert all(np.array_equal(r, expected) for r in results)


def test_thread_settings():
    try:
        instahide.set_num_threads(1)
        assert instahide.get_num_threads() == 1
    finally:
        instahide.set_num_threads(0)  # back to the default: the cores this process may use
    assert instahide.get_num_threads() == instahide.available_cores()


def encode_config(config, images, labels, key):
    encoder = instahide.Encoder(key=key, **config)
    return encoder.encode(images, labels, encoder.keys(len(images), 3))


CONFIGS = [dict(k=2), dict(k=4, pad=3, hflip=True, num_threads=1), dict(k=6, sign="abs", out_dtype="float16"),
           dict(k=3, distinct=True, out_layout="NHWC", out_dtype="bfloat16", num_threads=3),
           dict(k=5, sign="none", mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.2), num_threads=2)]


def test_concurrent_calls_of_different_configurations_equal_serial_calls():
    """Threads encoding different configurations and sizes at once (the GIL is released in the
    core) give bit for bit the serial results."""
    rng = np.random.default_rng(3)
    key = instahide.new_secret_key()
    data = [(rng.integers(0, 256, (n, 12, 12, 3), dtype=np.uint8), rng.integers(0, 10, n)) for n in (7, 64, 200)]
    data.append((rng.normal(size=(50, 3, 9, 11)).astype(np.float32), rng.integers(0, 10, 50)))
    jobs = [(config, d) for config in CONFIGS for d in range(len(data))]
    serial = [encode_config(config, *data[d], key) for config, d in jobs]
    failures, errors = [], []

    def work(offset):
        try:
            for _ in range(3):
                for j in range(offset, offset + len(jobs)):
                    config, d = jobs[j % len(jobs)]
                    out, soft = encode_config(config, *data[d], key)
                    expected, expected_soft = serial[j % len(jobs)]
                    same = np.array_equal(out.view(np.uint8), expected.view(np.uint8))
                    if not (same and np.array_equal(soft, expected_soft)):
                        failures.append((offset, j))
        except Exception as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i * 5,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread did not finish: deadlock?"
    assert not errors and not failures


def test_thread_count_changes_while_others_encode():
    key = instahide.new_secret_key()
    expected = encode_once(key)
    stop, errors, results = threading.Event(), [], []

    def change():
        counts = [0, 1, 2, 3, 8, 1, 0]
        i = 0
        while not stop.is_set():
            instahide.set_num_threads(counts[i % len(counts)])
            i += 1

    def work():
        try:
            for _ in range(6):
                results.append(np.array_equal(encode_once(key), expected))
        except Exception as error:  # reported below
            errors.append(error)

    changer = threading.Thread(target=change)
    workers = [threading.Thread(target=work) for _ in range(3)]
    try:
        changer.start()
        for t in workers:
            t.start()
        for t in workers:
            t.join(timeout=120)
    finally:
        stop.set()
        changer.join(timeout=10)
        instahide.set_num_threads(0)
    assert not any(t.is_alive() for t in workers), "deadlock"
    assert not errors and len(results) == 18 and all(results)


def forked_encode(key, queue):
    queue.put(encode_once(key).tobytes())


def test_fork_while_another_thread_encodes():
    """fork() while another thread holds the pool (mid parallel_for): the child starts a pool of
    its own and encodes, instead of waiting on threads that do not exist in it."""
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork on this platform")
    key = instahide.new_secret_key()
    expected = encode_once(key).tobytes()
    stop = threading.Event()

    def busy():
        while not stop.is_set():
            encode_once(key)

    background = threading.Thread(target=busy)
    background.start()
    context = multiprocessing.get_context("fork")
    survived = 0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            for _ in range(8):
                queue = context.Queue()
                process = context.Process(target=forked_encode, args=(key, queue))
                process.start()
                result = queue.get(timeout=60)
                process.join(timeout=60)
                assert process.exitcode == 0 and result == expected
                survived += 1
    finally:
        stop.set()
        background.join(timeout=60)
    assert survived == 8


def test_dataloader_fork_workers_after_the_parent_encoded():
    """DataLoader workers (fork start method) after the parent has encoded, so the parent's pool
    exists: the workers' batches equal the parent's own, within a timeout (no deadlock)."""
    torch = pytest.importorskip("torch")
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork on this platform")
    from torch.utils.data import DataLoader

    from instahide.torch import EncodedBatches

    rng = np.random.default_rng(4)
    images, labels = rng.integers(0, 256, (96, 16, 16, 3), dtype=np.uint8), rng.integers(0, 10, 96)
    encoder = instahide.Encoder(k=4, pad=2, hflip=True)
    batches = EncodedBatches(images, labels, encoder, batch_size=16)
    batches.set_epoch(2)
    in_parent = [batches[i] for i in range(len(batches))]  # the parent's pool now runs
    loader = DataLoader(batches, batch_size=None, num_workers=2, multiprocessing_context="fork", timeout=60)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from_workers = list(loader)
    assert len(from_workers) == len(in_parent)
    for (x, y), (px, py) in zip(from_workers, in_parent, strict=True):
        assert torch.equal(x, px) and torch.equal(y, py)


def test_interrupts_between_encode_calls_leave_the_pool_working(request):
    """SIGINT arriving while the core encodes (GIL released) is raised once the call returns;
    the pool keeps working, and later results are unchanged."""
    import os
    import signal
    import time

    # The disposition this test relies on, whatever the process inherited (a shell that runs
    # the suite in the background ignores SIGINT); restored afterwards.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    key = instahide.new_secret_key()
    expected = encode_once(key)
    interrupted = 0
    for i in range(10):
        timer = threading.Timer(0.002 * (i + 1), os.kill, (os.getpid(), signal.SIGINT))
        timer.start()
        try:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                encode_once(key)
        except KeyboardInterrupt:
            interrupted += 1
        finally:
            timer.join()
        assert np.array_equal(encode_once(key), expected)
    assert interrupted == 10
