"""The regularizers and the schedule against closed forms, with the loss gradient held at zero so that
only the regularizer moves the parameters."""
import math

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from sparsesweep.optim import apply_decoupled_weight_decay, build_lr_scheduler, build_optimizer, plan_schedule

OPTIMIZERS = ["sgd", "adam", "adadelta", "adagrad", "amsgrad", "adamax", "rmsprop"]


def optimizer_cfg(make_config, name, **changes):
    cfg = make_config([f"optimizer={name}"]).optimizer
    for key, value in changes.items():
        cfg[key] = value
    return cfg


def regularizer(name, value=None, exclude=False):
    cfg = {"name": name, "exclude_bn_and_bias": exclude}
    if value is not None:
        cfg[name] = value
    return OmegaConf.create(cfg)


def step_with_zero_loss_gradient(model, optimizer, scheduler, steps):
    """Each step: zero loss gradient (so only L2 / WD act), optimizer step, WD, schedule."""
    trajectory = []
    for _ in range(steps):
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        optimizer.step()
        apply_decoupled_weight_decay(optimizer)
        scheduler.step()
        trajectory.append(model.weight.detach().clone())
    return trajectory


def scalar_model(value):
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(value)
    return model


def constant_schedule(optimizer, total=10_000):
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[total], gamma=0.1)


@pytest.mark.parametrize("l2", [1e-5, 1e-4, 1e-2])
def test_adam_l2_moves_by_lr_per_step_whatever_the_coefficient(make_config, l2):
    # Adam normalizes the L2 gradient l2*theta by its own magnitude: the step is ~lr, sign-like.
    lr = 1e-3
    model = scalar_model(0.5)
    optimizer = build_optimizer(optimizer_cfg(make_config, "adam", lr=lr), regularizer("l2", l2), model)
    trajectory = step_with_zero_loss_gradient(model, optimizer, constant_schedule(optimizer), 20)
    steps = torch.diff(torch.stack([torch.tensor([[0.5]])] + trajectory).flatten())
    assert torch.allclose(steps, torch.full_like(steps, -lr), rtol=0.02)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_weight_decay_follows_the_lr_schedule_not_the_lr(make_config, name):
    wd, theta0, steps, decay_step = 1e-2, 2.0, 12, 5
    model = scalar_model(theta0)
    optimizer = build_optimizer(optimizer_cfg(make_config, name), regularizer("wd", wd), model)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[decay_step], gamma=0.1)
    trajectory = step_with_zero_loss_gradient(model, optimizer, scheduler, steps)
    # theta_t = theta_0 * prod(1 - wd * lr_t / lr_0): lr_t / lr_0 is 1 before the decay step, 0.1 after.
    expected, theta = [], theta0
    for t in range(steps):
        theta *= 1 - wd * (1.0 if t < decay_step else 0.1)
        expected.append(theta)
    assert torch.allclose(torch.stack(trajectory).flatten(), torch.tensor(expected), rtol=1e-6)


def test_sgd_l2_goes_through_momentum(make_config):
    lr, momentum, l2, theta0, steps = 0.1, 0.9, 1e-2, 1.0, 15
    model = scalar_model(theta0)
    optimizer = build_optimizer(optimizer_cfg(make_config, "sgd", lr=lr, momentum=momentum),
                                regularizer("l2", l2), model)
    trajectory = step_with_zero_loss_gradient(model, optimizer, constant_schedule(optimizer), steps)
    # Heavy ball on the L2 gradient alone: buf <- momentum * buf + l2 * theta; theta <- theta - lr * buf.
    expected, theta, buf = [], theta0, None
    for _ in range(steps):
        grad = l2 * theta
        buf = grad if buf is None else momentum * buf + grad
        theta -= lr * buf
        expected.append(theta)
    assert torch.allclose(torch.stack(trajectory).flatten(), torch.tensor(expected), rtol=1e-6)
    assert expected[0] == pytest.approx(theta0 * (1 - lr * l2))


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_no_regularizer_leaves_parameters_alone(make_config, name):
    model = scalar_model(1.5)
    optimizer = build_optimizer(optimizer_cfg(make_config, name), regularizer("none"), model)
    trajectory = step_with_zero_loss_gradient(model, optimizer, constant_schedule(optimizer), 5)
    assert all(float(t) == 1.5 for t in trajectory)


@pytest.mark.parametrize("kind", ["l2", "wd"])
def test_exclude_bn_and_bias_exempts_one_dimensional_parameters(make_config, kind):
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = build_optimizer(optimizer_cfg(make_config, "sgd"), regularizer(kind, 0.1, exclude=True), model)
    scheduler = constant_schedule(optimizer)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    apply_decoupled_weight_decay(optimizer)
    scheduler.step()
    after = dict(model.named_parameters())
    assert torch.equal(after["1.weight"], before["1.weight"]) and torch.equal(after["1.bias"], before["1.bias"])
    assert torch.equal(after["0.bias"], before["0.bias"])
    assert not torch.allclose(after["0.weight"], before["0.weight"])


def test_step_schedule_drops_the_lr_at_the_planned_step(make_config):
    sched = make_config(["schedule.base_epochs=3", "schedule.decay_epochs=2"]).schedule
    plan = plan_schedule(sched, train_size=100, batch_size=40)  # 2 steps per epoch, last 20 images unused
    assert (plan.steps_per_epoch, plan.total_steps, plan.decay_step, plan.epochs) == (2, 10, 6, 5)
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = build_lr_scheduler(optimizer, plan, sched)
    lrs = []
    for _ in range(plan.total_steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([0.1] * 6 + [0.01] * 4)


def test_fixed_iterations_keeps_the_step_count_across_batch_sizes(make_config):
    sched = make_config(["schedule=fixed_iterations", "schedule.base_epochs=250", "schedule.decay_epochs=75"]).schedule
    plans = {b: plan_schedule(sched, train_size=50_000, batch_size=b) for b in (20, 40, 80, 160)}
    assert {p.total_steps for p in plans.values()} == {325 * 1250}
    assert {p.decay_step for p in plans.values()} == {250 * 1250}
    assert [plans[b].epochs for b in (20, 40, 80, 160)] == [163, 325, 650, 1303]  # 312 full batches of 160
    assert plan_schedule(make_config().schedule, 50_000, 80).total_steps == 325 * 625  # default: epochs fixed


def test_adam_l2_decays_an_unused_weight_much_faster_than_wd(make_config):
    # The paper's synthetic observation: coupled L2 through Adam shrinks a weight that gets no loss gradient
    # by ~lr per step, decoupled WD only by the factor (1 - wd) per step.
    finals = {}
    for kind in ("l2", "wd"):
        model = scalar_model(1.0)
        optimizer = build_optimizer(optimizer_cfg(make_config, "adam"), regularizer(kind, 1e-4), model)
        finals[kind] = float(step_with_zero_loss_gradient(model, optimizer, constant_schedule(optimizer), 500)[-1])
    assert finals["l2"] == pytest.approx(1.0 - 500 * 1e-3, abs=0.05)  # v lags as theta shrinks
    assert finals["wd"] == pytest.approx(math.pow(1 - 1e-4, 500), rel=1e-4)  # fp32 products
