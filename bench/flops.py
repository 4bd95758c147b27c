"""The machine's dense float32 matmul rate: the peak the training steps are measured against.

    python bench/flops.py                      # GFLOP/s of an n x n matmul, n = 2048
    python bench/flops.py --size 4096 --repeats 5

TensorFlow multiplies two random float32 matrices on every core it has (oneDNN); a matmul
of n x n by n x n is 2 n^3 floating-point operations. On a machine shared with other jobs a
matmul only gets what they leave of the cores: a round times `--matmuls` matmuls one by one
and keeps the fastest, what the cores give when this process has them; the figure is the
median of `--repeats` rounds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

# Large enough that each core works on blocks that stay in cache and the threads' fixed
# costs are noise.
DEFAULT_SIZE = 2048
DEFAULT_MATMULS = 5


def matmul_gflops(size: int = DEFAULT_SIZE, matmuls: int = DEFAULT_MATMULS) -> float:
    """GFLOP/s of the fastest of `matmuls` float32 size x size matmuls (one round)."""
    a = tf.random.stateless_normal([size, size], seed=[1, 2])
    b = tf.random.stateless_normal([size, size], seed=[3, 4])
    tf.linalg.matmul(a, b).numpy()  # warm up: threads, caches
    seconds = []
    for _ in range(matmuls):
        start = time.perf_counter()
        tf.linalg.matmul(a, b)[0, 0].numpy()  # eager on the CPU: returns once computed
        seconds.append(time.perf_counter() - start)
    return 2 * size**3 / min(seconds) / 1e9


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
