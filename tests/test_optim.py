"""The regularizers and the schedule against closed forms, with the loss gradient held at zero so that
only the regularizer moves the parameters; L2 against torch's coupled weight_decay, bit for bit, and
checkpoints of every optimizer, under random gradients. Every `optimizer` option is covered."""
import io
import math

import hydra.utils
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from conftest import CONF
from sparsesweep.optim import DecoupledDecay, Plan, build_optimizer, plan_schedule, set_lr

OPTIMIZERS = sorted(path.stem for path in (CONF / "optimizer").glob("*.yaml"))
# Whose own `weight_decay` is a decoupled decay theta *= 1 - lr * weight_decay (for the others it is coupled L2).
OWN_DECOUPLED_DECAY = ["adamw", "adafactor"]


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


def step_with_zero_loss_gradient(model, optimizer, steps, decay_step=10_000):
    """Each step: zero loss gradient (so only L2 / WD act), optimizer step, WD; the LR x0.1 from decay_step on."""
    plan, schedule = Plan(steps_per_epoch=1, total_steps=steps, decay_step=decay_step), OmegaConf.create(
        {"decay_factor": 0.1})
    decay = DecoupledDecay(optimizer, torch.device("cpu"))
    trajectory = []
    for step in range(steps):
        if set_lr(optimizer, plan, schedule, step):
            decay.update()
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        optimizer.step()
        decay.apply()
        trajectory.append(model.weight.detach().clone())
    return trajectory


def scalar_model(value):
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(value)
    return model


@pytest.mark.parametrize("name", ["adam", "amsgrad", "adamw"])
@pytest.mark.parametrize("l2", [1e-5, 1e-4, 1e-2])
def test_adam_l2_moves_by_lr_per_step_whatever_the_coefficient(make_config, name, l2):
    # Adam normalizes the L2 gradient l2*theta by its own magnitude: the step is ~lr, sign-like. For AdamW too
    # (its own decay off): regularizer=l2 goes through the normalization, not into AdamW's decoupled decay.
    lr = 1e-3
    model = scalar_model(0.5)
    changes = {"lr": lr, "weight_decay": 0.0} if name == "adamw" else {"lr": lr}
    optimizer = build_optimizer(optimizer_cfg(make_config, name, **changes), regularizer("l2", l2), model)
    trajectory = step_with_zero_loss_gradient(model, optimizer, 20)
    steps = torch.diff(torch.stack([torch.tensor([[0.5]])] + trajectory).flatten())
    assert torch.allclose(steps, torch.full_like(steps, -lr), rtol=0.02)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_weight_decay_follows_the_lr_schedule_not_the_lr(make_config, name):
    wd, theta0, steps, decay_step = 1e-2, 2.0, 12, 5
    model = scalar_model(theta0)
    cfg = optimizer_cfg(make_config, name)
    own = cfg.get("weight_decay", 0.0)  # AdamW's own decay acts as well: theta *= 1 - lr_t * own
    optimizer = build_optimizer(cfg, regularizer("wd", wd), model)
    trajectory = step_with_zero_loss_gradient(model, optimizer, steps, decay_step)
    # theta_t = theta_0 * prod(1 - wd * lr_t / lr_0): lr_t / lr_0 is 1 before the decay step, 0.1 after.
    expected, theta = [], theta0
    for t in range(steps):
        schedule = 1.0 if t < decay_step else 0.1
        theta *= (1 - wd * schedule) * (1 - cfg.lr * schedule * own)
        expected.append(theta)
    assert torch.allclose(torch.stack(trajectory).flatten(), torch.tensor(expected), rtol=1e-6)


def test_sgd_l2_goes_through_momentum(make_config):
    lr, momentum, l2, theta0, steps = 0.1, 0.9, 1e-2, 1.0, 15
    model = scalar_model(theta0)
    optimizer = build_optimizer(optimizer_cfg(make_config, "sgd", lr=lr, momentum=momentum),
                                regularizer("l2", l2), model)
    trajectory = step_with_zero_loss_gradient(model, optimizer, steps)
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
def test_no_regularizer_leaves_parameters_alone_but_for_an_optimizers_own_decay(make_config, name):
    model = scalar_model(1.5)
    cfg = optimizer_cfg(make_config, name)
    own = cfg.get("weight_decay", 0.0)
    optimizer = build_optimizer(cfg, regularizer("none"), model)
    trajectory = step_with_zero_loss_gradient(model, optimizer, 5)
    if own:  # AdamW: theta_t = theta_0 (1 - lr weight_decay)^t
        assert [float(t) for t in trajectory] == pytest.approx([1.5 * (1 - cfg.lr * own) ** t for t in range(1, 6)],
                                                               rel=1e-6)
    else:
        assert all(float(t) == 1.5 for t in trajectory)


def torch_optimizer(cfg, model, **changes):
    """The config's torch optimizer, plainly over the model's parameters, with `changes` to its arguments."""
    kwargs = OmegaConf.to_container(cfg, resolve=True)
    kwargs.pop("name")
    return hydra.utils.instantiate({**kwargs, **changes}, model.parameters())


def step_both_with_random_gradients(ours, theirs, models, steps=30):
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        for mine, reference in zip(*(m.parameters() for m in models)):
            mine.grad = torch.randn(mine.shape, generator=generator)
            reference.grad = mine.grad.clone()
        ours.step()
        theirs.step()
    return all(torch.equal(a, b) for a, b in zip(*(m.parameters() for m in models)))


def twin_linears():
    model, reference = nn.Linear(4, 3), nn.Linear(4, 3)
    reference.load_state_dict(model.state_dict())
    return model, reference


@pytest.mark.parametrize("name", [o for o in OPTIMIZERS if o not in OWN_DECOUPLED_DECAY])
def test_l2_is_torchs_coupled_weight_decay_bit_for_bit(make_config, name):
    # regularizer=l2 adds l2 * theta to the gradient itself, for every optimizer alike; where torch's own
    # weight_decay is that coupled L2 the two agree exactly, under a real (random) loss gradient.
    l2, cfg = 1e-3, optimizer_cfg(make_config, name)
    model, reference = twin_linears()
    optimizer = build_optimizer(cfg, regularizer("l2", l2), model)
    assert step_both_with_random_gradients(optimizer, torch_optimizer(cfg, reference, weight_decay=l2),
                                           (model, reference))


def test_adamw_l2_goes_through_the_normalization_and_its_own_decay_stays_decoupled(make_config):
    l2 = 1e-3
    # Its own decay off, AdamW + regularizer=l2 is exactly Adam (same betas) with torch's coupled L2 ...
    model, reference = twin_linears()
    optimizer = build_optimizer(optimizer_cfg(make_config, "adamw", weight_decay=0.0), regularizer("l2", l2), model)
    adam = torch_optimizer(optimizer_cfg(make_config, "adam", betas=[0.9, 0.999]), reference, weight_decay=l2)
    assert step_both_with_random_gradients(optimizer, adam, (model, reference))
    # ... and with it (1e-2), torch's AdamW on the loss gradient + l2 * theta: both regularizers act.
    model, reference = twin_linears()
    optimizer = build_optimizer(optimizer_cfg(make_config, "adamw"), regularizer("l2", l2), model)
    adamw = torch_optimizer(optimizer_cfg(make_config, "adamw"), reference)

    @torch.no_grad()
    def add_l2_to_the_gradient(*_):
        for p in reference.parameters():
            p.grad.add_(p, alpha=l2)
    adamw.register_step_pre_hook(add_l2_to_the_gradient)
    assert adamw.defaults["weight_decay"] == 1e-2
    assert step_both_with_random_gradients(optimizer, adamw, (model, reference))


@pytest.mark.parametrize("l2", [1e-5, 1e-2])
def test_adafactor_l2_is_a_normalized_gradient_not_its_own_decay(make_config, l2):
    # Adafactor's first step is theta -= lr * RMS(theta) * g / sqrt(g^2): with g = l2 * theta that is
    # theta * (1 - lr), whatever l2. Had L2 gone into Adafactor's own weight_decay it would be theta * (1 - lr * l2).
    cfg = optimizer_cfg(make_config, "adafactor")
    model = scalar_model(0.5)
    optimizer = build_optimizer(cfg, regularizer("l2", l2), model)
    first = step_with_zero_loss_gradient(model, optimizer, 1)[0]
    assert float(first) == pytest.approx(0.5 * (1 - cfg.lr), rel=1e-6)


def test_an_optimizers_own_decay_spares_the_exempt_group(make_config):
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = optimizer_cfg(make_config, "adamw")
    optimizer = build_optimizer(cfg, regularizer("l2", 0.0, exclude=True), model)
    step_with_zero_loss_gradient(model[0], optimizer, 1)
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n], before[n]) for n in ("0.bias", "1.weight", "1.bias"))
    assert torch.allclose(after["0.weight"], before["0.weight"] * (1 - cfg.lr * cfg.weight_decay), rtol=1e-6)


def reload(optimizer, model, make):
    """A new optimizer from make(model) with `optimizer`'s state, through torch.save and a weights_only load (as the
    trainer's checkpoints)."""
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    resumed = make(model)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    return resumed


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_an_optimizer_resumes_from_a_weights_only_checkpoint(make_config, name):
    cfg = optimizer_cfg(make_config, name)
    model, reference = twin_linears()
    make = lambda m: build_optimizer(cfg, regularizer("l2", 1e-3), m)  # noqa: E731
    optimizer, uninterrupted = make(model), make(reference)
    assert step_both_with_random_gradients(optimizer, uninterrupted, (model, reference), steps=3)
    assert step_both_with_random_gradients(reload(optimizer, model, make), uninterrupted, (model, reference))


def test_a_checkpoint_from_before_the_l2_hook_resumes_with_the_same_l2(make_config):
    # Such checkpoints hold the L2 coefficient as torch's (coupled) weight_decay and no "l2" key.
    cfg, l2 = optimizer_cfg(make_config, "adam"), 1e-3
    model, reference = twin_linears()
    make = lambda m: build_optimizer(cfg, regularizer("l2", l2), m)  # noqa: E731
    optimizer, uninterrupted = make(model), make(reference)
    for group in optimizer.param_groups:
        group["weight_decay"] = group.pop("l2")
    assert step_both_with_random_gradients(reload(optimizer, model, make), uninterrupted, (model, reference))


@pytest.mark.parametrize("kind", ["l2", "wd"])
def test_exclude_bn_and_bias_exempts_one_dimensional_parameters(make_config, kind):
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = build_optimizer(optimizer_cfg(make_config, "sgd"), regularizer(kind, 0.1, exclude=True), model)
    decay = DecoupledDecay(optimizer, torch.device("cpu"))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    decay.apply()
    after = dict(model.named_parameters())
    assert torch.equal(after["1.weight"], before["1.weight"]) and torch.equal(after["1.bias"], before["1.bias"])
    assert torch.equal(after["0.bias"], before["0.bias"])
    assert not torch.allclose(after["0.weight"], before["0.weight"])


def test_step_schedule_drops_the_lr_at_the_planned_step(make_config):
    sched = make_config(["schedule.base_epochs=3", "schedule.decay_epochs=2"]).schedule
    plan = plan_schedule(sched, train_size=100, batch_size=40)  # 2 steps per epoch, last 20 images unused
    assert (plan.steps_per_epoch, plan.total_steps, plan.decay_step, plan.epochs) == (2, 10, 6, 5)
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    optimizer.param_groups[0]["initial_lr"] = 0.1
    lrs = []
    for step in range(plan.total_steps):
        set_lr(optimizer, plan, sched, step)
        lrs.append(optimizer.param_groups[0]["lr"])
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
        finals[kind] = float(step_with_zero_loss_gradient(model, optimizer, 500)[-1])
    assert finals["l2"] == pytest.approx(1.0 - 500 * 1e-3, abs=0.05)  # v lags as theta shrinks
    assert finals["wd"] == pytest.approx(math.pow(1 - 1e-4, 500), rel=1e-4)  # fp32 products
