"""What pruning the implicit sparsity buys at inference: full-width BasicNet (CIFAR size, 3x32x32, 10 classes)
with 70% of its features dead, the paper's level for Adam + L2 1e-4 on CIFAR-10 (Table 1), before and after
`sparsesweep.prune.prune_model`.

    python benchmarks/prune_latency.py [--uniform] [--batch-size B] [--repeats R] [--threads T] [--quick]

Dead features get gamma = 0 and beta <= 0 (Adam's negative biases, paper Fig. 2), so removal is exact. By
default the dead fraction grows in proportion to depth (C1 14% ... C7 94%), as the paper reports more
sparsity in later layers; --uniform kills 70% of every layer. Prints params, FLOPs (batch 1), the median
latency of a batch on CPU (and CUDA when there is one) and the pruned/unpruned latency ratio.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from a checkout, installed or not

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from sparsesweep.models import BasicNet  # noqa: E402
from sparsesweep import CONF_DIR  # noqa: E402
from sparsesweep.prune import compare, prune_model  # noqa: E402

DEAD_FRACTION = 0.70  # paper Table 1: Adam, L2 1e-4, CIFAR-10, 70% by gamma
INPUT_SHAPE = (3, 32, 32)
NUM_CLASSES = 10


def dead_per_layer(widths: list[int], uniform: bool) -> list[int]:
    """Dead features per layer, DEAD_FRACTION of all: the same fraction everywhere, or one proportional to
    the layer's depth (1..7) scaled to that total."""
    weights = [1.0] * len(widths) if uniform else [float(depth) for depth in range(1, len(widths) + 1)]
    scale = DEAD_FRACTION * sum(widths) / sum(w * width for w, width in zip(weights, widths))
    return [min(width, round(scale * w * width)) for w, width in zip(weights, widths)]


def sparse_basicnet(uniform: bool, seed: int = 0) -> BasicNet:
    cfg = OmegaConf.load(CONF_DIR / "model" / "basicnet.yaml")
    torch.manual_seed(seed)
    model = BasicNet(list(cfg.widths), INPUT_SHAPE[0], NUM_CLASSES, pool_after=list(cfg.pool_after),
                     hidden=cfg.hidden).eval()
    widths = [f.conv.out_channels for f in model.features]
    with torch.no_grad():
        for feature, dead in zip(model.features, dead_per_layer(widths, uniform)):
            channels = torch.randperm(feature.bn.num_features)[:dead]
            feature.bn.weight[channels] = 0.0
            feature.bn.bias[channels] = -0.5 * torch.rand(dead)
    return model


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uniform", action="store_true", help="70%% dead in every layer")
    parser.add_argument("--batch-size", type=int, default=40, help="latency batch (the paper's training batch)")
    parser.add_argument("--repeats", type=int, default=30, help="timed batches per median")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op CPU threads (default: PyTorch's)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: batch 4, 3 repeats")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch_size, args.repeats = 4, 3
    if args.threads:
        torch.set_num_threads(args.threads)

    model = sparse_basicnet(args.uniform)
    pruned, report = prune_model(model, torch.zeros(1, *INPUT_SHAPE))
    measured = compare(model, pruned, INPUT_SHAPE, batch_size=args.batch_size, repeats=args.repeats)

    features = report.features()
    per_layer = "  ".join(f"{name} {100 * (1 - layer['after'] / layer['before']):.0f}%"
                          for name, layer in features["per_layer"].items())
    print(f"BasicNet, full width, {'x'.join(map(str, INPUT_SHAPE))} input, {NUM_CLASSES} classes; "
          f"{torch.get_num_threads()} CPU threads")
    print(f"removed {features['removed']} of {features['before']} features "
          f"({100 * features['removed'] / features['before']:.1f}%): {per_layer}")
    rows = [("params", measured["params"], ",d"), ("FLOPs (batch 1)", measured["flops"], ",d")]
    rows += [(f"latency {device} ms (batch {m['batch_size']}, median of {m['repeats']})", m, ".2f")
             for device, m in measured["latency_ms"].items()]
    print(f"{'':44} {'before':>13} {'after':>13} {'after/before':>13}")
    for label, values, number in rows:
        print(f"{label:44} {values['before']:>13{number}} {values['after']:>13{number}} "
              f"{values['after'] / values['before']:>13.3f}")
    print(f"max |output change| on random inputs: {measured['max_abs_output_change']:.2g}")


if __name__ == "__main__":
    main()
