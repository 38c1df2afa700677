"""How much slower sparsesweep is than the plain PyTorch it wraps, on CPU.

    python benchmarks/overhead.py [--steps N] [--threads T] [--warmup W] [--repeats R] [hydra overrides...]

1. Per training step: `sparsesweep.train.run` vs a minimal hand-written loop on the same model (same
   config and seed, so the same init), data, batch size, optimizer and regularizer (target <= 1.03).
2. The sparsity pass: `sparsesweep.measure.measure` over the training set vs one plain eval-mode
   forward pass over it at the same batch size (target <= 1.3).
Measurements of the two sides are interleaved and repeated; the medians are compared.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from a checkout, installed or not

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import open_dict  # noqa: E402

from sparsesweep import train  # noqa: E402
from sparsesweep.data import batches, load_dataset  # noqa: E402
from sparsesweep.measure import measure  # noqa: E402
from sparsesweep.models import build_model  # noqa: E402
from sparsesweep.optim import build_optimizer  # noqa: E402

CONF = ROOT / "conf"
DEFAULTS = ["dataset=shapes_clean", "dataset.resolution=16", "model.width_multiplier=0.25", "batch_size=40"]


def benchmark_config(overrides: list[str], warmup: int, steps: int, threads: int):
    """The config with exactly one epoch of warmup + steps steps, so the timed window holds no
    end-of-epoch work, and a small test set, so the untimed evaluation stays short."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=DEFAULTS + overrides)  # later overrides win
    images = (warmup + steps) * cfg.batch_size
    with open_dict(cfg):
        cfg.device, cfg.threads = "cpu", threads
        cfg.schedule.base_epochs, cfg.schedule.decay_epochs, cfg.schedule.iterations_at_batch_size = 1, 0, None
        cfg.dataset.train_limit, cfg.dataset.test_limit = images, cfg.eval_batch_size
        cfg.dataset.augment = False  # the baseline's pre-normalized tensors cannot be augmented
        if "train_size" in cfg.dataset:  # a rendered dataset: render just enough
            cfg.dataset.train_size, cfg.dataset.test_size = images, cfg.eval_batch_size
    return cfg


def sparsesweep_ms_per_step(cfg, warmup: int, steps: int) -> float:
    """Times the real train.run between the end of warm-up (the training batch stream resumed after
    `warmup` steps) and the end of the epoch (the first evaluate call): wrappers on the train module's
    names mark both, so loading, evaluation, checkpoints and the final measurement stay outside."""
    marks, evaluate = {}, train.evaluate

    def marked_batches(*args, **kwargs):
        for done, batch in enumerate(batches(*args, **kwargs), start=1):
            yield batch
            if done == warmup and kwargs.get("shuffle_seed") is not None:  # the training stream
                marks.setdefault("start", time.perf_counter())

    def marked_evaluate(*args, **kwargs):
        marks.setdefault("end", time.perf_counter())
        return evaluate(*args, **kwargs)

    with tempfile.TemporaryDirectory() as out_dir, \
            mock.patch.multiple(train, batches=marked_batches, evaluate=marked_evaluate):
        train.run(cfg, Path(out_dir))  # a fresh directory each time: no checkpoint to resume from
    return (marks["end"] - marks["start"]) * 1e3 / steps


def baseline_ms_per_step(cfg, data, warmup: int, steps: int) -> float:
    torch.manual_seed(cfg.seed)  # as train.run does: the same initial weights
    model = build_model(cfg.model, data.channels, data.num_classes)
    optimizer = build_optimizer(cfg.optimizer, cfg.regularizer, model)  # the same Adam/SGD/... + L2 groups
    decoupled_decay = [(g["params"], 1.0 - g["decoupled_wd"]) for g in optimizer.param_groups if g["decoupled_wd"]]
    order = torch.randperm(len(data.train))
    images = ((data.train.images.float() - data.mean.view(1, -1, 1, 1)) / data.std.view(1, -1, 1, 1))[order]
    labels = data.train.labels[order]
    size = cfg.batch_size
    model.train()
    for step in range(warmup + steps):
        if step == warmup:
            start = time.perf_counter()
        x, y = images[step * size:(step + 1) * size], labels[step * size:(step + 1) * size]
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        for params, factor in decoupled_decay:  # regularizer=wd only; the baseline's LR is constant
            torch._foreach_mul_(params, factor)
    return (time.perf_counter() - start) * 1e3 / steps


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def sparsity_pass_seconds(cfg, data, model, repeats: int) -> tuple[list[float], list[float]]:
    def train_batches():  # the same batching code for both sides
        return batches(data, data.train, cfg.eval_batch_size, torch.device("cpu"))

    @torch.no_grad()
    def plain_forward():
        model.eval()
        for x, _ in train_batches():
            model(x)

    def sparsity_pass():
        measure(model, train_batches(), cfg.measure)

    plain_forward(), sparsity_pass()  # warm-up
    timings = [(seconds(sparsity_pass), seconds(plain_forward)) for _ in range(repeats)]
    return [t[0] for t in timings], [t[1] for t in timings]


def report(name: str, ours: list[float], base: list[float], target: float) -> None:
    """Medians, their ratio, and every repeat's raw timing in brackets."""
    ratio = statistics.median(ours) / statistics.median(base)
    print(f"{name}: sparsesweep {statistics.median(ours):.3f} {fmt(ours)}  "
          f"baseline {statistics.median(base):.3f} {fmt(base)}  "
          f"ratio {ratio:.3f} (target <= {target}: {'ok' if ratio <= target else 'OVER'})")


def fmt(timings: list[float]) -> str:
    return "[" + " ".join(f"{t:.3f}" for t in timings) + "]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=600, help="timed training steps per repeat")
    parser.add_argument("--warmup", type=int, default=40, help="untimed training steps before them")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads, for both sides")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("overrides", nargs="*", help="hydra overrides, applied after " + " ".join(DEFAULTS))
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    cfg = benchmark_config(args.overrides, args.warmup, args.steps, args.threads)
    data = load_dataset(cfg.dataset)
    print(f"{' '.join(DEFAULTS + args.overrides)}: {len(data.train)} train images, "
          f"{args.warmup} warm-up + {args.steps} timed steps, {args.threads} threads, {args.repeats} repeats")
    ours, base = [], []
    for _ in range(args.repeats):  # interleaved, so drifts in machine speed hit both sides alike
        ours.append(sparsesweep_ms_per_step(cfg, args.warmup, args.steps))
        base.append(baseline_ms_per_step(cfg, data, args.warmup, args.steps))
    report("training step, ms/step", ours, base, 1.03)

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, data.channels, data.num_classes)
    ours, base = sparsity_pass_seconds(cfg, data, model, args.repeats)
    report(f"sparsity pass over the {len(data.train)} train images, s", ours, base, 1.3)


if __name__ == "__main__":
    main()
