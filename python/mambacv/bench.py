"""The `mambacv bench` latency of one model, called from Python: per batch size the median / min / max of the
Python call m.classify(x) and of the same calls timed inside C++ (Model._time_classify, no Python per call),
interleaved, and the difference (the binding's overhead).

    PYTHONPATH=build/python python3 -m mambacv.bench --model vmamba_tiny_s1l8 --batch 1 --iters 10 --threads 2
"""
import argparse
import statistics
import time

import numpy as np

import mambacv


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vmamba_tiny_s1l8")
    ap.add_argument("--weights", help="checkpoint (default: random weights)")
    ap.add_argument("--batch", default="1", help="comma-separated batch sizes")
    ap.add_argument("--size", type=int, default=0, help="input side (default: the model's)")
    ap.add_argument("--dtype", default="f32")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=10)
    a = ap.parse_args()
    opts = dict(dtype=a.dtype, threads=a.threads)
    m = mambacv.Model.load(a.model, a.weights, **opts) if a.weights else mambacv.Model.random(a.model, **opts)
    size = a.size or m.input_size
    print("model %s, %s, %s threads, %dx%d%s" % (a.model, a.dtype, a.threads or "all", size, size,
                                                  "" if a.weights else ", random weights"))
    print("%6s %12s %10s %10s %12s %10s" % ("batch", "python_ms", "min_ms", "max_ms", "c++_ms", "overhead"))
    for b in (int(v) for v in a.batch.split(",")):
        x = np.random.default_rng(0).standard_normal((b, 3, size, size), dtype=np.float32)
        for _ in range(a.warmup):
            m.classify(x)
        py, cc = [], []
        for _ in range(a.iters):  # interleaved, so both see the same host load
            t0 = time.perf_counter()
            m.classify(x)
            py.append((time.perf_counter() - t0) * 1e3)
            cc += m._time_classify(x, 1)
        mp, mc = statistics.median(py), statistics.median(cc)
        print("%6d %12.2f %10.2f %10.2f %12.2f %+9.3f" % (b, mp, min(py), max(py), mc, mp - mc))


if __name__ == "__main__":
    main()
