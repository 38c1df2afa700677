from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# The smoke experiment, one thread: runs in about a second.
SMOKE = ["+experiment=smoke"]


@pytest.fixture
def make_config():
    """make_config(overrides) -> the composed, unresolved config, as `python -m sparsesweep` would see it."""
    def make(overrides=()):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides))
    return make


def cli(module, *args, cwd, timeout=300):
    """`python -m module ARGS` as a user runs it; returns (exit code, stdout + stderr)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    return done.returncode, done.stdout + done.stderr


def wait_for(condition, timeout=180):
    """Polls `condition` until it holds; fails the test after `timeout` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def read_results(sweep_dir):
    """{job overrides (without +experiment) as one string: results.json} for every run under sweep_dir."""
    import json

    runs = {}
    for path in sweep_dir.rglob("results.json"):
        results = json.loads(path.read_text())
        runs[" ".join(o for o in results["overrides"] if not o.startswith("+experiment"))] = results
    return runs


# Fake folders in the genuine layouts: class k's images are a flat gray of CLASS_GRAY[k], so a test reads
# the label back from the pixels (JPEG keeps a flat color within a few levels).
CLASS_GRAY = [40, 120, 200]


def write_jpeg(path: Path, gray: int, size=(64, 64), mode="RGB"):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, gray if mode == "L" else (gray,) * 3).save(path, "JPEG", quality=95)


def make_tiny_imagenet(root: Path, per_class=4, val_per_class=2) -> list[str]:
    """tiny-imagenet-200 layout; wnids.txt in unsorted order (classes are the sorted wnids)."""
    wnids = ["n09999999", "n01443537", "n02085620"]
    base = root / "tiny-imagenet-200"
    base.mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    annotations = []
    for k, wnid in enumerate(sorted(wnids)):
        for i in range(per_class):
            write_jpeg(base / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", CLASS_GRAY[k],
                       mode="L" if i == 0 else "RGB")  # some genuine Tiny-ImageNet JPEGs are grayscale
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
        for i in range(val_per_class):
            name = f"val_{k * val_per_class + i}.JPEG"
            write_jpeg(base / "val" / "images" / name, CLASS_GRAY[k])
            annotations.append(f"{name}\t{wnid}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(annotations[::-1]) + "\n")
    return sorted(wnids)


def make_imagenet(root: Path, per_class=6):
    """ImageFolder train/ and val/, images of assorted sizes and aspect ratios."""
    sizes = [(96, 64), (50, 80), (64, 64)]
    for split, count in (("train", per_class), ("val", 2)):
        for k in range(len(CLASS_GRAY)):
            for i in range(count):
                write_jpeg(root / split / f"n0{k}" / f"{i}.JPEG", CLASS_GRAY[k], size=sizes[i % len(sizes)])
