"""The machine's dense float32 matmul rate: the peak the training steps are measured against.

    python bench/flops.py                      # GFLOP/s of an n x n matmul, n = 2048
    python bench/flops.py --size 4096 --repeats 5

TensorFlow multiplies two random float32 matrices on every core it has (oneDNN); a matmul
of n x n by n x n is 2 n^3 floating-point operations. The figure is the median of
`--repeats` timed rounds of `--matmuls` matmuls each, after one untimed (the first call
traces and warms the caches).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

# Large enough that each core works on blocks that stay in cache and the threads' fixed
# costs are noise: n = 1024 already reaches within a few % of n = 4096 on 2 cores.
DEFAULT_SIZE = 2048
DEFAULT_MATMULS = 10


def matmul_gflops(size: int = DEFAULT_SIZE, matmuls: int = DEFAULT_MATMULS) -> float:
    """GFLOP/s of `matmuls` float32 size x size matmuls in a row, one timed round."""
    a = tf.random.stateless_normal([size, size], seed=[1, 2])
    b = tf.random.stateless_normal([size, size], seed=[3, 4])

    @tf.function
    def chain(a, b):
        total = tf.zeros([], a.dtype)
        for _ in range(matmuls):  # unrolled: independent matmuls, one sum keeps them live
            total += tf.reduce_sum(tf.linalg.matmul(a, b)[0])
            a = a + 1.0
        return total

    chain(a, b).numpy()  # trace and warm up
    start = time.perf_counter()
    chain(a, b).numpy()
    return 2 * size**3 * matmuls / (time.perf_counter() - start) / 1e9


def peak_gflops(repeats: int, size: int = DEFAULT_SIZE) -> list[float]:
    """GFLOP/s of `repeats` rounds."""
    return [matmul_gflops(size) for _ in range(repeats)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rounds = peak_gflops(args.repeats, args.size)
    print(f"{os.cpu_count()} CPUs, float32 {args.size} x {args.size} matmul:")
    print(f"median {statistics.median(rounds):.1f} GFLOP/s, rounds {[round(r, 1) for r in rounds]}")


if __name__ == "__main__":
    main()
