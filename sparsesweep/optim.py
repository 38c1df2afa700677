"""Optimizers, the two regularizers and the LR schedule: where the paper's science is decided.

- L2 (coupled): gradient += l2 * theta before the optimizer sees it, so adaptive methods rescale it.
  Added here, in a step pre-hook, for every optimizer alike: bit for bit what PyTorch's `weight_decay` does
  for SGD, Adam, ... (tested), which PyTorch's argument itself cannot give for AdamW and Adafactor, where it
  is a decoupled decay.
- An optimizer's own `weight_decay` (set in its config: AdamW's theta <- theta * (1 - lr_t * weight_decay))
  is left to PyTorch: it acts whatever the regularizer, except on the exempt group.
- WD (decoupled): after every optimizer step, theta <- theta * (1 - wd * lr_t / lr_0): the decay follows
  the LR *schedule* (lr_t / lr_0) but not the LR itself, as in the paper's Table 1 WD rows.
- Schedule: the base LR for `base_epochs`, then x`decay_factor` for `decay_epochs`, counted in optimizer
  steps; with `iterations_at_batch_size` the step counts are those of that batch size (Tables 6-7).
"""
from __future__ import annotations

import contextlib
import inspect
import math
from dataclasses import dataclass

import hydra.utils
import torch
from omegaconf import OmegaConf
from torch import nn

from sparsesweep.errors import ConfigError


def coefficient(reg_cfg) -> float:
    """The regularization strength: the value under the regularizer's own name (l2 or wd), 0 for none."""
    return float(reg_cfg.get(reg_cfg.name, 0.0)) if reg_cfg.name != "none" else 0.0


def build_optimizer(opt_cfg, reg_cfg, model: nn.Module, capturable: bool = False) -> torch.optim.Optimizer:
    """The optimizer named by opt_cfg (its `_target_` and hyperparameters) over two parameter groups:
    regularized, and exempt (BN gamma/beta and biases, only with regularizer.exclude_bn_and_bias).
    capturable: its step may be captured in a CUDA graph (the Adam family's `capturable`, where it has one)."""
    strength = coefficient(reg_cfg)
    exempt_1d = reg_cfg.get("exclude_bn_and_bias", False)
    regularized = [p for p in model.parameters() if not (exempt_1d and p.ndim == 1)]
    exempt = [p for p in model.parameters() if exempt_1d and p.ndim == 1]
    l2 = strength if reg_cfg.name == "l2" else 0.0
    wd = strength if reg_cfg.name == "wd" else 0.0
    # `l2` and `decoupled_wd` ride along in the param groups (and so in the optimizer's state_dict); the
    # regularized group keeps the optimizer's own weight_decay, the exempt one has none.
    groups = [{"params": regularized, "l2": l2, "decoupled_wd": wd},
              {"params": exempt, "l2": 0.0, "decoupled_wd": 0.0, "weight_decay": 0.0}]
    kwargs = OmegaConf.to_container(opt_cfg, resolve=True)
    kwargs.pop("name")
    # Plain lists, not ListConfig, for list arguments (betas, Adafactor's eps): they land in the param groups,
    # and checkpoints are loaded with weights_only, which refuses omegaconf types.
    if capturable and "capturable" in inspect.signature(hydra.utils.get_class(kwargs["_target_"])).parameters:
        kwargs["capturable"] = True
    optimizer = hydra.utils.instantiate({**kwargs, "_convert_": "all"}, [g for g in groups if g["params"]])
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"]
    optimizer.register_step_pre_hook(add_coupled_l2)
    optimizer.register_load_state_dict_post_hook(keep_own_capturable(optimizer))
    return optimizer


def why_step_not_capturable(opt_cfg) -> str | None:
    """Why the optimizer's step cannot be captured in a CUDA graph, or None. Capturable: SGD (no step count)
    and every torch optimizer with a `capturable` option (its step count then lives on the device); the
    others keep state on the host or read values back to it (Adagrad's step count, Adafactor's .item())."""
    cls = hydra.utils.get_class(opt_cfg._target_)
    if issubclass(cls, torch.optim.SGD) or "capturable" in inspect.signature(cls).parameters:
        return None
    return f"{opt_cfg._target_}'s step keeps state on the host (it has no `capturable` option)"


def keep_own_capturable(optimizer: torch.optim.Optimizer):
    """A load_state_dict post-hook: a checkpoint brings its param groups' flags along, so one written by a
    captured run (capturable=True, step counts on the device) would make an eager run's optimizer capturable
    (on a CPU: refused at its first step), and an eager run's checkpoint would leave a captured run's step
    counts on the host (frozen in its graph). This puts back the optimizer's own `capturable` flag and moves
    each step count where that flag wants it, as torch itself places it."""
    own = [group.get("capturable") for group in optimizer.param_groups]

    def hook(optimizer: torch.optim.Optimizer) -> None:
        for group, capturable in zip(optimizer.param_groups, own):
            if capturable is not None:
                place_step_counts(optimizer, group, capturable)
    return hook


def stop_capturable(optimizer: torch.optim.Optimizer) -> None:
    """The optimizer of a run that will not be captured after all: its step counts go back to the host, where an
    eager step keeps them (the Adam family's capturable step pays for device-side counts)."""
    for group in optimizer.param_groups:
        if group.get("capturable"):
            place_step_counts(optimizer, group, False)


def place_step_counts(optimizer: torch.optim.Optimizer, group: dict, capturable: bool) -> None:
    """Sets the group's `capturable` flag and moves its step counts where that flag wants them, as torch itself
    places them: on the parameters' device when capturable (or fused), else on the host."""
    group["capturable"] = capturable
    for param in group["params"]:
        state = optimizer.state.get(param, {})
        if torch.is_tensor(state.get("step")):
            on = param.device if capturable or group.get("fused") else torch.device("cpu")
            state["step"] = state["step"].to(dtype=torch.float32, device=on)


@contextlib.contextmanager
def unregularized(optimizer: torch.optim.Optimizer, decay: "DecoupledDecay"):
    """Within it, the optimizer's steps leave out every regularization: the coupled L2, the decoupled WD and the
    optimizer's own weight_decay (the self-check's counterfactual, graphs.self_check)."""
    saved = [{key: group[key] for key in ("l2", "weight_decay") if key in group} for group in optimizer.param_groups]
    for group, values in zip(optimizer.param_groups, saved):
        group.update(dict.fromkeys(values, 0.0))
    for factor in decay.factors:
        factor.fill_(1.0)
    try:
        yield
    finally:
        for group, values in zip(optimizer.param_groups, saved):
            group.update(values)
        decay.update()


@torch.no_grad()
def add_coupled_l2(optimizer: torch.optim.Optimizer, args, kwargs) -> None:
    """grad += l2 * theta, in place, just before every optimizer.step(): what torch's coupled weight_decay does,
    for every optimizer alike (AdamW's and Adafactor's weight_decay is a decoupled decay, not this)."""
    for group in optimizer.param_groups:
        # A checkpoint from before this hook has no "l2": its groups carry the L2 as torch's weight_decay.
        if group.get("l2"):
            params = [p for p in group["params"] if p.grad is not None]
            torch._foreach_add_([p.grad for p in params], params, alpha=group["l2"])


class DecoupledDecay:
    """WD: theta <- theta * (1 - wd * lr_t / lr_0) right after every optimizer step. The factor is a device
    tensor, set whenever the LR changes (set_lr), so the step itself reads nothing from the host."""

    def __init__(self, optimizer: torch.optim.Optimizer, device: torch.device):
        self.groups = [g for g in optimizer.param_groups if g["decoupled_wd"]]
        self.factors = [torch.ones((), device=device) for _ in self.groups]
        self.update()

    def update(self) -> None:
        for group, factor in zip(self.groups, self.factors):
            factor.fill_(1.0 - group["decoupled_wd"] * group["lr"] / group["initial_lr"])

    @torch.no_grad()
    def apply(self) -> None:
        for group, factor in zip(self.groups, self.factors):
            torch._foreach_mul_(group["params"], factor)


@dataclass(frozen=True)
class Plan:
    """The run's length in optimizer steps."""
    steps_per_epoch: int  # one pass over the training set at this batch size
    total_steps: int
    decay_step: int       # first step taken at the decayed LR

    @property
    def epochs(self) -> int:
        """Passes over the data; the last one is partial when the step count is fixed by another batch size."""
        return math.ceil(self.total_steps / self.steps_per_epoch)


def plan_schedule(sched_cfg, train_size: int, batch_size: int) -> Plan:
    steps_per_epoch = train_size // batch_size
    if steps_per_epoch < 1:
        raise ConfigError(f"batch_size={batch_size} exceeds the {train_size} training images: lower batch_size")
    reference = sched_cfg.get("iterations_at_batch_size") or batch_size
    reference_steps = train_size // reference
    if reference_steps < 1:
        raise ConfigError(f"schedule.iterations_at_batch_size={reference} exceeds the {train_size} training "
                          f"images: lower it")
    return Plan(steps_per_epoch, (sched_cfg.base_epochs + sched_cfg.decay_epochs) * reference_steps,
                sched_cfg.base_epochs * reference_steps)


def set_lr(optimizer: torch.optim.Optimizer, plan: Plan, sched_cfg, step: int) -> bool:
    """Sets every group's LR for the optimizer step that follows `step` steps (the step schedule: the
    initial LR, x decay_factor from plan.decay_step on); True when that changed it."""
    factor = sched_cfg.decay_factor if step >= plan.decay_step else 1.0
    changed = False
    for group in optimizer.param_groups:
        lr = group["initial_lr"] * factor
        changed |= lr != group["lr"]
        group["lr"] = lr
    return changed
