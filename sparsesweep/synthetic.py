"""The synthetic low-gradient experiment: how fast L2 and WD shrink a weight that the loss rarely or weakly moves.

`python -m sparsesweep.synthetic [--out DIR] [--steps N] [--coefficients 1e-5,1e-4,1e-3] [--p P]
[--magnitude A] [--optimizers adam,sgd,...]`

The paper explains why L2 and WD differ under adaptive optimizers this way: a weight that seldom gets a loss
gradient (the weights of a selective feature) is shrunk by coupled L2 much faster under Adam than by WD, or by
L2 under SGD, even at a smaller coefficient. Here every setting (optimizer x regularizer x coefficient) is a set
of `parameters` weights starting at |theta| = 1, trained by the optimizer and regularizer exactly as the trainer
builds them (the `optimizer` config group's options, optim.build_optimizer, optim.DecoupledDecay)
at a constant LR. The loss gradient is pure noise, the same draws for every setting: with probability p per step
and weight +-magnitude (random sign), else 0. It favours no value of theta, so what shrinks theta is the
regularizer as the optimizer passes it on; the noise only feeds the optimizer's gradient statistics (and jitters
theta). With p = 0 only the regularizer acts, and the tests check the closed forms.

Written to --out: synthetic_decay.csv (one row per setting), synthetic_decay.png/.pdf (median |theta| over the
weights vs step, one panel per optimizer); the table is also printed as markdown.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from torch import nn  # noqa: E402

from multirun_analysis.plots import save  # noqa: E402
from sparsesweep import CONF_DIR  # noqa: E402
from multirun_analysis.render import markdown_table  # noqa: E402
from sparsesweep.optim import DecoupledDecay, build_optimizer  # noqa: E402

CONF = CONF_DIR
THRESHOLD = 1e-3  # the paper's gamma criterion: a weight below it counts as dead
REGULARIZERS = ("l2", "wd")
NAME = "synthetic_decay"


def optimizer_options() -> list[str]:
    """Every option of the `optimizer` config group."""
    return sorted(path.stem for path in (CONF / "optimizer").glob("*.yaml"))


def optimizer_config(name: str):
    """The option's config as `python -m sparsesweep optimizer=NAME` composes it."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=[f"optimizer={name}"]).optimizer


@dataclass(frozen=True)
class Setting:
    optimizer: str
    regularizer: str
    coefficient: float


@dataclass
class Result:
    settings: list[Setting]
    curves: torch.Tensor  # (settings, steps + 1): median |theta| over the weights, before step 1 .. after the last
    p: float
    magnitude: float
    parameters: int        # weights per setting
    lrs: dict[str, float]  # each optimizer's (constant) LR, for the figure

    def crossing_step(self, index: int) -> int | None:
        """The first step after which the median |theta| is below THRESHOLD (None: never within the run)."""
        below = (self.curves[index] < THRESHOLD).nonzero()
        return int(below[0]) if len(below) else None

    def table(self) -> pd.DataFrame:
        return pd.DataFrame({
            "optimizer": [s.optimizer for s in self.settings],
            "regularizer": [s.regularizer for s in self.settings],
            "coefficient": [s.coefficient for s in self.settings],
            "p": self.p,
            "magnitude": self.magnitude,
            "crossing_step": pd.array([self.crossing_step(i) for i in range(len(self.settings))], dtype="Int64"),
            "final_abs_theta": self.curves[:, -1].tolist(),
        })


def simulate(optimizer_configs: dict, coefficients, p: float, magnitude: float, steps: int, parameters: int,
             seed: int = 0) -> Result:
    """Trains every setting for `steps` steps; one optimizer per setting, built as the trainer builds it."""
    settings, weights, optimizers = [], [], []
    for name, opt_cfg in optimizer_configs.items():
        for kind in REGULARIZERS:
            for coefficient in coefficients:
                weight = nn.Parameter(torch.ones(parameters))
                reg_cfg = OmegaConf.create({"name": kind, kind: coefficient, "exclude_bn_and_bias": False})
                optimizer = build_optimizer(opt_cfg, reg_cfg, nn.ParameterList([weight]))
                settings.append(Setting(name, kind, coefficient))
                weights.append(weight)
                optimizers.append((optimizer, DecoupledDecay(optimizer, weight.device)))  # a constant LR: lr_t/lr_0 = 1
    generator = torch.Generator().manual_seed(seed)
    curves = torch.empty(len(settings), steps + 1)
    curves[:, 0] = 1.0
    for step in range(1, steps + 1):
        fires = torch.rand(parameters, generator=generator) < p
        signs = torch.randint(0, 2, (parameters,), generator=generator) * 2.0 - 1.0
        noise = torch.where(fires, magnitude * signs, 0.0)
        # One copy per setting: the L2 pre-hook adds l2 * theta to each .grad in place.
        grads = noise.expand(len(settings), parameters).clone()
        for weight, (optimizer, decay), grad in zip(weights, optimizers, grads):
            weight.grad = grad
            optimizer.step()
            decay.apply()
        curves[:, step] = torch.stack([w.detach() for w in weights]).abs().median(dim=1).values
    lrs = {name: float(cfg.lr) for name, cfg in optimizer_configs.items()}
    return Result(settings, curves, p, magnitude, parameters, lrs)


def plot(result: Result):
    """One panel per optimizer: median |theta| vs step, log y; color = coefficient, line style = regularizer."""
    names = list(result.lrs)
    columns = min(4, len(names))
    rows = math.ceil(len(names) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.4 * columns, 2.7 * rows), sharey=True, squeeze=False)
    coefficients = sorted({s.coefficient for s in result.settings})
    colors = {c: plt.cm.viridis(i / max(1, len(coefficients) - 1) * 0.85) for i, c in enumerate(coefficients)}
    styles = {"l2": "-", "wd": "--"}
    steps = torch.arange(result.curves.shape[1])
    for ax, name in zip(axes.flat, names):
        for index, setting in enumerate(result.settings):
            if setting.optimizer == name:
                ax.plot(steps, result.curves[index], color=colors[setting.coefficient],
                        linestyle=styles[setting.regularizer],
                        label=f"{setting.regularizer.upper()} {setting.coefficient:g}")
        ax.axhline(THRESHOLD, color="gray", linewidth=0.8, linestyle=":")
        ax.set_yscale("log")
        ax.set_ylim(1e-5, 2)
        ax.set_title(f"{name} (lr {result.lrs[name]:g})", fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("median |θ|")
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"{result.parameters} weights from |θ| = 1; loss gradient ±{result.magnitude:g} with probability "
                 f"{result.p:g} per step; dotted: |θ| = {THRESHOLD:g}", fontsize=10)
    return fig


def coefficient_list(text: str) -> list[float]:
    return [float(value) for value in text.split(",")]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparsesweep.synthetic", description=(
        "L2 vs WD on weights that rarely get a loss gradient, for every optimizer option: "
        f"the step at which |theta| falls below {THRESHOLD:g}, a table and a figure."))
    parser.add_argument("--out", type=Path, default=Path("outputs/synthetic"), help="where the CSV and figure go")
    parser.add_argument("--steps", type=int, default=5000, help="optimizer steps (constant LR)")
    parser.add_argument("--coefficients", type=coefficient_list, default=[1e-5, 1e-4, 1e-3],
                        help="L2 and WD coefficients, comma-separated")
    parser.add_argument("--p", type=float, default=0.001, help="probability per step that a weight gets a loss gradient")
    parser.add_argument("--magnitude", type=float, default=1e-4, help="size of that gradient (its sign is random)")
    parser.add_argument("--parameters", type=int, default=64, help="weights per setting (the curve is their median)")
    parser.add_argument("--optimizers", type=lambda text: text.split(","), default=optimizer_options(),
                        help="optimizer options, comma-separated (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    unknown = sorted(set(args.optimizers) - set(optimizer_options()))
    if unknown:
        parser.error(f"--optimizers: no such option {', '.join(unknown)} (options: {', '.join(optimizer_options())})")
    if args.steps < 1 or args.parameters < 1 or not 0 <= args.p <= 1:
        parser.error("--steps and --parameters must be >= 1 and --p in [0, 1]")

    configs = {name: optimizer_config(name) for name in args.optimizers}
    start = time.perf_counter()
    result = simulate(configs, args.coefficients, args.p, args.magnitude, args.steps, args.parameters, args.seed)
    elapsed = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    table = result.table()
    table.to_csv(args.out / f"{NAME}.csv", index=False)
    figures = save(plot(result), args.out, NAME)
    shown = table.astype({"crossing_step": object}).fillna({"crossing_step": "never"})
    shown["final_abs_theta"] = shown["final_abs_theta"].map(lambda value: f"{value:.3g}")
    print(markdown_table(shown))
    print(f"\n{len(result.settings)} settings x {args.steps} steps in {elapsed:.1f} s; wrote "
          f"{', '.join(str(path) for path in [args.out / f'{NAME}.csv', *figures])}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
