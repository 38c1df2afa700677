"""How many training images per second the ImageNet folder path delivers (decode, RandomResizedCrop(224),
flip, uint8 batches through DataLoader workers, normalization on the device), per worker count: size
`dataset.loader.workers` so the loader outruns the GPU (e.g. ResNet-50 trains at roughly 1-3k img/s on one
modern GPU, depending on precision).

    python benchmarks/loader.py --root /data/imagenet [--workers 0 4 8 16] [--batches 50] [--batch-size 64]
    python benchmarks/loader.py --fake 2000            # a temp folder of 2000 random 500x375 JPEGs instead

Without --root, --fake writes JPEGs of ImageNet's typical size and JPEG quality; random texture decodes
somewhat slower than photographs, so real folders do a little better.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from a checkout, installed or not

import numpy as np  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from sparsesweep.batches import FolderFeed  # noqa: E402
from sparsesweep import CONF_DIR  # noqa: E402
from sparsesweep.datasets import load_dataset  # noqa: E402


def write_fake_imagenet(root: Path, images: int, classes: int = 10) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", images), ("val", classes)):
        for index in range(count):
            folder = root / split / f"n{index % classes:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            # Smooth random texture: compresses like a photograph more than white noise does.
            small = rng.integers(0, 256, (47, 63, 3), dtype=np.uint8)
            image = Image.fromarray(small).resize((500, 375), Image.BILINEAR)
            image.save(folder / f"{index}.JPEG", "JPEG", quality=90)


def images_per_second(root: Path, workers: int, batch_size: int, count: int, device: torch.device) -> float:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["dataset=imagenet", f"dataset.root={root}",
                                                       f"dataset.loader.workers={workers}"])
    data = load_dataset(cfg.dataset)
    feed = FolderFeed(data, batch_size, device)  # the trainer's: random-resized crops and flips, normalized
    feed.draw(0)
    feed.next_batch()  # worker start-up is paid once per run (persistent workers), not per epoch
    start = time.perf_counter()
    done = 0
    while done < count * batch_size:
        done += len(feed.next_batch()[0])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--root", type=Path, help="an ImageNet folder with train/ and val/")
    source.add_argument("--fake", type=int, metavar="N", help="generate N training JPEGs in a temp folder")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2, 4, 8])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=20, help="timed batches per worker count")
    args = parser.parse_args()
    root = args.root
    if root is None:
        root = Path(tempfile.mkdtemp(prefix="loader-bench-"))
        write_fake_imagenet(root, args.fake)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"{root}: batch {args.batch_size}, {args.batches} batches, to {device}")
    for workers in args.workers:
        rate = images_per_second(root, workers, args.batch_size, args.batches, device)
        print(f"workers {workers:3d}: {rate:8.0f} img/s")


if __name__ == "__main__":
    main()
