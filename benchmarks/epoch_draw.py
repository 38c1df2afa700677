"""The epoch's redraw on the CPU: what a run does at every epoch's start (batches.EpochFeed.draw: the
permutation, every batch's crop offsets and flips, moved into the feed's buffers), while the rest of its
pack waits.

    python benchmarks/epoch_draw.py [--images 50000] [--batch-size 40] [--repeats 20]

CIFAR-10's size by default (50,000 images at batch 40: 1,250 batches). Prints the median time of a redraw
and, beside it, the median of a plain randperm of the same size (the part no redraw can avoid).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from a checkout, installed or not

import torch  # noqa: E402

from sparsesweep.batches import EpochFeed  # noqa: E402
from sparsesweep.datasets import Dataset, Split  # noqa: E402


def median_ms(work, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--batch-size", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    split = Split(torch.zeros(args.images, 3, 2, 2, dtype=torch.uint8), torch.zeros(args.images, dtype=torch.long))
    data = Dataset("bench", split, split, 10, True, torch.zeros(3), torch.ones(3))
    feed = EpochFeed(data, args.batch_size, torch.device("cpu"))
    epoch = iter(range(10**9))
    draw = median_ms(lambda: feed.draw(next(epoch)), args.repeats)
    generator = torch.Generator().manual_seed(0)
    floor = median_ms(lambda: torch.randperm(args.images, generator=generator), args.repeats)
    print(f"redraw of {feed.steps} batches of {args.batch_size} ({args.images} images, 1 thread, torch "
          f"{torch.__version__}): {draw:.2f} ms; a bare randperm of {args.images}: {floor:.2f} ms "
          f"(x{draw / floor:.1f})")


if __name__ == "__main__":
    main()
