"""The synthetic low-gradient experiment against closed forms (p = 0: only the regularizer moves the weights),
and its outputs: a table naming every optimizer option, a labelled figure."""
import math

import matplotlib.image
import pandas as pd
import pytest
import torch

from sparsesweep import synthetic
from sparsesweep.synthetic import THRESHOLD, optimizer_config, optimizer_options, simulate


def run(names, coefficients, steps, p=0.0, magnitude=1e-4, parameters=4):
    return simulate({name: optimizer_config(name) for name in names}, coefficients, p, magnitude, steps, parameters)


def curve(result, optimizer, regularizer, coefficient):
    index = result.settings.index(synthetic.Setting(optimizer, regularizer, coefficient))
    return index, result.curves[index]


def test_sgd_l2_follows_the_heavy_ball_recursion():
    cfg = optimizer_config("sgd")
    lr, momentum, steps = cfg.lr, cfg.momentum, 300
    result = run(["sgd"], [1e-3, 1e-2], steps)
    for l2 in (1e-3, 1e-2):
        # v_t = m v_{t-1} + l2 theta_{t-1}; theta_t = theta_{t-1} - lr v_t (in float64, from theta_0 = 1)
        expected, theta, velocity = [1.0], 1.0, 0.0
        for _ in range(steps):
            velocity = momentum * velocity + l2 * theta
            theta -= lr * velocity
            expected.append(theta)
        _, measured = curve(result, "sgd", "l2", l2)
        assert torch.allclose(measured.double(), torch.tensor(expected, dtype=torch.float64), rtol=2e-5, atol=0)


@pytest.mark.slow
def test_weight_decay_alone_is_geometric_for_every_optimizer():
    # Zero loss gradient: every optimizer's own update is exactly 0, so theta_t = prod (1 - wd lr_t/lr_0) = (1 - wd)^t
    # at the constant LR, times AdamW's own (1 - lr weight_decay)^t: the same fp32 products, exactly.
    wd, steps = 1e-2, 700
    configs = {name: optimizer_config(name) for name in optimizer_options()}
    result = simulate(configs, [wd], p=0.0, magnitude=1e-4, steps=steps, parameters=4)
    for name, cfg in configs.items():
        own = cfg.get("weight_decay", 0.0)
        theta, expected = torch.ones(()), [torch.ones(())]
        for _ in range(steps):
            theta = theta * (1 - cfg.lr * own) if own else theta
            theta = theta * (1 - wd)
            expected.append(theta)
        index, measured = curve(result, name, "wd", wd)
        assert torch.equal(measured, torch.stack(expected)), name
        crossing = next(t for t, value in enumerate(expected) if value < THRESHOLD)
        assert result.crossing_step(index) == crossing, name
    assert result.crossing_step(curve(result, "sgd", "wd", wd)[0]) == math.ceil(math.log(THRESHOLD) / math.log(1 - wd))


def adam_recursion(l2, lr, betas, eps, steps):
    """Adam (Kingma & Ba, Alg. 1, PyTorch's eps placement) on the L2 gradient alone, float64, from theta_0 = 1."""
    theta, m, v, values = 1.0, 0.0, 0.0, [1.0]
    for t in range(1, steps + 1):
        grad = l2 * theta
        m = betas[0] * m + (1 - betas[0]) * grad
        v = betas[1] * v + (1 - betas[1]) * grad * grad
        theta -= lr / (1 - betas[0] ** t) * m / (math.sqrt(v) / math.sqrt(1 - betas[1] ** t) + eps)
        values.append(theta)
    return torch.tensor(values, dtype=torch.float64)


def test_adam_l2_takes_about_theta0_over_lr_steps_whatever_the_coefficient():
    cfg = optimizer_config("adam")
    lr, betas, steps = cfg.lr, tuple(cfg.betas), 1600
    result = run(["adam"], [1e-5, 1e-3], steps)
    crossings = {}
    for l2 in (1e-5, 1e-3):
        index, measured = curve(result, "adam", "l2", l2)
        crossings[l2] = result.crossing_step(index)
        expected = adam_recursion(l2, lr, betas, cfg.eps, steps)
        assert crossings[l2] == next(t for t, value in enumerate(expected) if value < THRESHOLD)
        # Up to there, to fp32 rounding (after it, theta ~ 0 and relative errors mean nothing).
        until = crossings[l2] + 1
        assert torch.allclose(measured.double()[:until], expected[:until], rtol=1e-4, atol=0)
        # An Adam step moves theta by at most lr when 1 - beta1 <= sqrt(1 - beta2) (Kingma & Ba, Sec. 2.1).
        assert crossings[l2] >= (1 - THRESHOLD) / lr
    # The update is invariant to the gradient's scale (but for eps), so the coefficient drops out: 100x the L2
    # gets there within 1% of the same step; v lags behind the shrinking theta, hence the ~1.4 |theta_0| / lr.
    assert crossings[1e-3] == pytest.approx(crossings[1e-5], rel=0.01)
    assert crossings[1e-3] <= 1.5 / lr


@pytest.mark.slow
def test_the_command_writes_a_table_of_every_optimizer_and_a_labelled_figure(tmp_path, capsys):
    assert synthetic.main(["--out", str(tmp_path), "--steps", "20", "--parameters", "8"]) == 0
    table = pd.read_csv(tmp_path / "synthetic_decay.csv")
    options = optimizer_options()
    assert sorted(set(table.optimizer)) == options
    assert len(table) == len(options) * 2 * 3
    assert set(zip(table.regularizer, table.coefficient)) == {(r, c) for r in ("l2", "wd") for c in (1e-5, 1e-4, 1e-3)}
    printed = capsys.readouterr().out
    assert printed.startswith("| optimizer | regularizer | coefficient | p |")
    assert all(f"| {name} |" in printed for name in options)
    for ext in ("png", "pdf"):
        assert (tmp_path / f"synthetic_decay.{ext}").stat().st_size > 10_000
    pixels = matplotlib.image.imread(tmp_path / "synthetic_decay.png")[..., :3]
    assert pixels.min() < 0.2 and pixels.max() > 0.9  # ink on white


def test_every_panel_has_labelled_axes_and_one_curve_per_setting():
    result = run(["adam", "sgd", "adamw"], [1e-4, 1e-3], 10, p=0.5)
    fig = synthetic.plot(result)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title().split()[0] for ax in panels] == ["adam", "sgd", "adamw"]
    for ax in panels:
        assert ax.get_xlabel() == "step" and "|θ|" in ax.get_ylabel() and ax.get_yscale() == "log"
        assert len(ax.get_lines()) == 2 * 2 + 1  # {L2, WD} x 2 coefficients, and the threshold
    assert [t.get_text() for t in panels[0].get_legend().get_texts()] == ["L2 0.0001", "L2 0.001", "WD 0.0001", "WD 0.001"]
