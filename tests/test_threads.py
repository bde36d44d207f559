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
