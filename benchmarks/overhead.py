"""How much slower sparsesweep is than the plain PyTorch it wraps, on CPU.

    python benchmarks/overhead.py [--steps N] [--threads T] [--warmup W] [--repeats R] [hydra overrides...]

1. Per training step: `sparsesweep.pack.train` (one run) vs a minimal hand-written loop on the same model (same
   config and seed, so the same init), data, batch size, optimizer and regularizer (target <= 1.03).
2. The starvation counters (sparsesweep.starvation): the hand-written loop's step with the counters' update vs
   without it, two copies of the loop stepped alternately (target <= 1.03).
3. The sparsity pass: `sparsesweep.measure.measure` over the training set vs one plain eval-mode
   forward pass over it at the same batch size (target <= 1.3).
The two sides alternate step by step (batch by batch in the sparsity pass), so bursts of load from other
processes on a shared machine hit both alike; each measurement is repeated `repeats` times and the
medians over repeats are compared.
"""
from __future__ import annotations

import argparse
import copy
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

from sparsesweep import CONF_DIR, assemble, pack, run  # noqa: E402
from sparsesweep.batches import batches  # noqa: E402
from sparsesweep.datasets import load_dataset  # noqa: E402
from sparsesweep.measure import measure  # noqa: E402
from sparsesweep.models import build_model  # noqa: E402
from sparsesweep.optim import build_optimizer  # noqa: E402
from sparsesweep.starvation import FeatureCounters  # noqa: E402

DEFAULTS = ["dataset=shapes_clean", "dataset.resolution=16", "model.width_multiplier=0.25", "batch_size=40"]


def benchmark_config(overrides: list[str], warmup: int, steps: int, threads: int):
    """The config with one epoch of exactly warmup + steps steps, so no end-of-epoch work falls among
    the timed steps, and a small test set, so the untimed evaluation stays short."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=DEFAULTS + overrides)  # later overrides win
    images = (warmup + steps) * cfg.batch_size
    with open_dict(cfg):
        cfg.device, cfg.threads = "cpu", threads
        cfg.schedule.base_epochs, cfg.schedule.decay_epochs, cfg.schedule.iterations_at_batch_size = 1, 0, None
        cfg.dataset.augment = False  # the baseline's pre-normalized tensors cannot be augmented
        if "train_size" in cfg.dataset:  # a rendered dataset: render just enough
            cfg.dataset.train_size, cfg.dataset.test_size = images, cfg.eval_batch_size
        else:
            cfg.dataset.train_limit, cfg.dataset.test_limit = images, cfg.eval_batch_size
    return cfg


def baseline_stepper(cfg, data, counted: bool = False):
    """The hand-written loop, one step per call: same model init, optimizer and batch size as sparsesweep's,
    data pre-normalized and shuffled once, batches sliced; `counted`: with the starvation counters' update
    where Run.train_step has it."""
    # As sparsesweep does: the same initial weights, memory format and (if performance.compile) compiled forward.
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, data.channels, data.num_classes)
    memory_format = assemble.memory_format(cfg, torch.device(cfg.device), model)
    model = model.to(memory_format=memory_format)
    forward = torch.compile(model) if cfg.performance.compile else model
    optimizer = build_optimizer(cfg.optimizer, cfg.regularizer, model)  # the same optimizer and L2 groups
    decoupled_decay = [(g["params"], 1.0 - g["decoupled_wd"]) for g in optimizer.param_groups if g["decoupled_wd"]]
    order = torch.randperm(len(data.train))
    images = ((data.train.images.float() - data.mean.view(1, -1, 1, 1)) / data.std.view(1, -1, 1, 1))[order]
    images, labels = images.contiguous(memory_format=memory_format), data.train.labels[order]
    size, starts = cfg.batch_size, iter(range(0, len(data.train), cfg.batch_size))
    counters = FeatureCounters(model, cfg.measure.gamma_threshold) if counted else None
    model.train()

    def step() -> None:
        start = next(starts)
        x, y = images[start:start + size], labels[start:start + size]
        loss = F.cross_entropy(forward(x), y)
        optimizer.zero_grad()
        loss.backward()
        if counters:
            counters.see_gradients()
        optimizer.step()
        with torch.no_grad():
            for params, factor in decoupled_decay:  # regularizer=wd only; the LR here is constant
                torch._foreach_mul_(params, factor)
        if counters:
            counters.see_scales()
    return step


def paired_counter_times(cfg, data, warmup: int, steps: int) -> tuple[list[float], list[float]]:
    """Seconds of each timed step of the hand-written loop with the starvation counters and without, two
    copies from the same init stepped alternately, which one first alternating too."""
    counted, plain = baseline_stepper(cfg, data, counted=True), baseline_stepper(cfg, data)
    times = {counted: [], plain: []}
    for done in range(warmup + steps):
        for step in (counted, plain) if done % 2 else (plain, counted):
            start = time.perf_counter()
            step()
            if done >= warmup:
                times[step].append(time.perf_counter() - start)
    return times[counted], times[plain]


def paired_step_times(cfg, data, warmup: int, steps: int) -> tuple[list[float], list[float]]:
    """Seconds of each timed step of a real sparsesweep run and of the baseline, one baseline step right
    after each sparsesweep step. A sparsesweep step is timed from the end of the baseline step before it to
    the end of its Run.train_step, so the pack loop's own work between steps counts; loading, evaluation,
    checkpoints and the final measurement fall outside (one epoch of exactly warmup + steps steps)."""
    baseline_step, train_step = baseline_stepper(cfg, data), run.Run.train_step
    ours, base, our_start, done = [], [], None, 0

    def interleaved_train_step(self) -> None:
        nonlocal our_start, done
        train_step(self)
        our_end = time.perf_counter()
        baseline_step()
        done += 1
        if done > warmup:
            ours.append(our_end - our_start)
            base.append(time.perf_counter() - our_end)
        our_start = time.perf_counter()

    with tempfile.TemporaryDirectory() as out_dir, mock.patch.object(run.Run, "train_step", interleaved_train_step):
        pack.train(cfg, Path(out_dir))  # a fresh directory each time: no checkpoint to resume from
    return ours, base


def paired_pass_times(cfg, data, model) -> tuple[float, float]:
    """Seconds of measure() over the training set and of a plain eval-mode no_grad forward pass over it,
    batch for batch alternating as in training: a plain batch runs each time measure has taken one. The
    plain pass runs a copy of the model, since measure's hooks sit on the model it is given."""
    plain_model, plain_seconds = copy.deepcopy(model).eval(), 0.0

    def train_batches():  # the same batching code for both sides
        return batches(data, data.train, cfg.eval_batch_size, torch.device("cpu"))

    def interleaved_batches():
        nonlocal plain_seconds
        plain_batches = train_batches()
        for batch in train_batches():
            yield batch
            start = time.perf_counter()
            with torch.no_grad():
                plain_model(next(plain_batches)[0])
            plain_seconds += time.perf_counter() - start

    start = time.perf_counter()
    measure(model, interleaved_batches(), cfg.measure)
    return time.perf_counter() - start - plain_seconds, plain_seconds


def report(name: str, ours: list[float], base: list[float], target: float) -> None:
    """Medians over repeats, their ratio, and every repeat's value in brackets."""
    ratio = statistics.median(ours) / statistics.median(base)
    print(f"{name}: sparsesweep {statistics.median(ours):.3f} {bracketed(ours)}  "
          f"baseline {statistics.median(base):.3f} {bracketed(base)}  "
          f"ratio {ratio:.3f} (target <= {target}: {'ok' if ratio <= target else 'OVER'})")


def ms_per_step(step_times) -> list[float]:
    """One value per repeat: the mean of its steps' times, in ms."""
    return [1e3 * statistics.fmean(times) for times in step_times]


def bracketed(values: list[float]) -> str:
    return "[" + " ".join(f"{v:.3f}" for v in values) + "]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=600, help="timed training steps per repeat")
    parser.add_argument("--warmup", type=int, default=40, help="untimed training steps before them (>= 1)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads, for both sides")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("overrides", nargs="*", help="hydra overrides, applied after " + " ".join(DEFAULTS))
    args = parser.parse_args()
    if args.warmup < 1:
        parser.error("--warmup must be >= 1: the first timed step starts where a warm-up step ends")

    torch.set_num_threads(args.threads)
    cfg = benchmark_config(args.overrides, args.warmup, args.steps, args.threads)
    data = load_dataset(cfg.dataset)
    if len(data.train) != (args.warmup + args.steps) * cfg.batch_size:
        sys.exit(f"only {len(data.train)} training images, too few for one epoch of {args.warmup} + "
                 f"{args.steps} steps at batch_size={cfg.batch_size}: lower --steps")
    print(f"{' '.join(DEFAULTS + args.overrides)}: {len(data.train)} train images, "
          f"{args.warmup} warm-up + {args.steps} timed steps, {args.threads} threads, {args.repeats} repeats")
    ours, base = zip(*(paired_step_times(cfg, data, args.warmup, args.steps) for _ in range(args.repeats)))
    report("training step, mean ms", ms_per_step(ours), ms_per_step(base), 1.03)
    counted, plain = zip(*(paired_counter_times(cfg, data, args.warmup, args.steps) for _ in range(args.repeats)))
    report("starvation counters: hand-written step with / without, mean ms", ms_per_step(counted),
           ms_per_step(plain), 1.03)

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, data.channels, data.num_classes)
    paired_pass_times(cfg, data, model)  # warm-up
    ours, base = zip(*(paired_pass_times(cfg, data, model) for _ in range(args.repeats)))
    report(f"sparsity pass over the {len(data.train)} train images, s", ours, base, 1.3)


if __name__ == "__main__":
    main()
