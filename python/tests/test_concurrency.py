# Python threads share one model: the GIL is released during inference, and results equal serial calls.
import threading
import time

import numpy as np

import mambacv


def run_threads(n, fn):
    barrier = threading.Barrier(n)
    results, errors = [None] * n, []

    def work(i):
        try:
            barrier.wait()
            results[i] = fn(i)
        except Exception as e:  # reported below, not swallowed by the thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


def test_threads_give_the_serial_results(vim_mini, vmamba_v2_mini):
    for m, g in (vim_mini, vmamba_v2_mini):
        x = g["input"]
        ref_logits = m.classify(x)
        ref_feats = m.features(x)

        def calls(i):
            return [(m.classify(x), m.features(x)) for _ in range(3)]

        for per_thread in run_threads(4, calls):
            for logits, feats in per_thread:
                np.testing.assert_array_equal(logits, ref_logits)
                assert feats.keys() == ref_feats.keys()
                for k in feats:
                    np.testing.assert_array_equal(feats[k], ref_feats[k])


def test_calls_overlap_in_time(fixtures):
    # With the GIL held for the whole call, one thread's call could not start before another's ended.
    m = mambacv.Model.load(str(fixtures / "vmamba_v2_mini.json"), threads=1)
    x = np.random.default_rng(0).standard_normal((4, 3, 96, 96), dtype=np.float32)
    m.classify(x)

    def calls(i):
        spans = []
        for _ in range(4):
            t0 = time.perf_counter()
            m.classify(x)
            spans.append((t0, time.perf_counter()))
        return spans

    a, b = run_threads(2, calls)
    overlap = any(s0 < e1 and s1 < e0 for s0, e0 in a for s1, e1 in b)
    assert overlap, (a, b)


def test_models_with_different_thread_budgets_side_by_side(fixtures):
    path = str(fixtures / "vim_mini.json")
    one, two = mambacv.Model.load(path, threads=1), mambacv.Model.load(path, threads=2)
    x = mambacv.load_weights(str(fixtures / "vim_mini.golden.safetensors"))["input"]
    ref = one.classify(x)
    out = run_threads(2, lambda i: (one if i == 0 else two).classify(x))
    for o in out:
        np.testing.assert_allclose(o, ref, rtol=1e-5, atol=1e-6)
