"""Why filters die, watched step by step: per-feature counters of starvation and death, kept on the device.

What the counters mean (starved, dead, starved_steps, longest_starved, death_step) is rundir_format.starvation's.
Here is how they are kept: `FeatureCounters` updates them in every training step with a handful of operations on
one vector of all the model's features, on the device and without reading anything back, so that a CUDA graph
captures them with the step (run.Run.train_step) and a user's own loop pays next to nothing (docs/models.md).

Starved is read from the gradients of the normalization layers' scales and shifts: each is a sum over every
position of every image of the gradient at the feature's output (Σ g·x̂ and Σ g). A gradient of exactly zero
everywhere makes both exactly zero; both are exactly zero otherwise only if two sums of nonzero floats cancel
exactly. It costs one comparison per feature, where watching the activations would cost a pass over them.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from rundir_format import starvation
from sparsesweep.measure import features_of

GAMMA_THRESHOLD = 1e-3  # the paper's "inactive by scale"


class FeatureCounters:
    """Starvation and death counters of every feature of `model` (models/discovery.py finds them).

    In your own loop, once per step, after optimizer.step() and before the next zero_grad():

        counters = FeatureCounters(model)
        for x, y in loader:
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            counters.step()
        counters.summary()   # per layer: features, dead, death steps, starved shares (a host sync)
        counters.arrays()    # per feature, as features.npz holds them

    step() reads the gradients of the features' scales and shifts as backward left them (PyTorch's optimizers,
    weight_decay included, do not change them) and the scales the optimizer step left. A step in two halves,
    see_gradients() then see_scales(), is for a loop that changes the gradients in place before its step (the
    trainer's coupled L2 does). state_dict() and load_state_dict() carry the counters through a checkpoint."""

    def __init__(self, model: nn.Module, gamma_threshold: float = GAMMA_THRESHOLD, features=None):
        self.features = features or features_of(model)
        self.gamma_threshold = gamma_threshold
        self.scales = [feature.bn.weight for feature in self.features]
        # A norm layer without a shift: its scale's gradient alone says it.
        self.shifts = [feature.bn.bias if feature.bn.bias is not None else feature.bn.weight
                       for feature in self.features]
        self.sizes = [scale.numel() for scale in self.scales]
        device, total = self.scales[0].device, sum(self.sizes)

        def zeros(*shape, dtype=torch.int64):
            return torch.zeros(*shape, dtype=dtype, device=device)
        # Everything the step writes, at fixed addresses (a CUDA graph replays on them).
        self.steps = zeros(())                 # steps counted
        self.starved_steps = zeros(total)
        self.starved_run = zeros(total)        # consecutive starved steps ending with the last one
        self.longest_starved = zeros(total)
        self.dead_run = zeros(total)           # consecutive dead steps ending with the last one
        self.starved_now = zeros(total, dtype=torch.bool)  # this step's, between the two halves

    # ---- the step: device work only --------------------------------------------------------------------

    @torch.no_grad()
    def see_gradients(self) -> None:
        """The first half of a step: after backward, before the gradients change (the starved features)."""
        gradients = torch.cat([self._gradient(p) for p in self.scales + self.shifts]).view(2, -1)
        torch.all(gradients == 0, dim=0, out=self.starved_now)
        self.starved_steps.add_(self.starved_now)
        self.starved_run.add_(1).mul_(self.starved_now)
        torch.maximum(self.longest_starved, self.starved_run, out=self.longest_starved)

    @torch.no_grad()
    def see_scales(self) -> None:
        """The second half: after the optimizer step (the dead features: starved, and |γ| now small)."""
        small = torch.cat([scale.detach() for scale in self.scales]).abs_() < self.gamma_threshold
        self.dead_run.add_(1).mul_(small.logical_and_(self.starved_now))
        self.steps.add_(1)

    def step(self) -> None:
        """One training step's update (both halves): after optimizer.step(), before the next zero_grad()."""
        self.see_gradients()
        self.see_scales()

    @staticmethod
    def _gradient(parameter: torch.Tensor) -> torch.Tensor:
        if parameter.grad is None:
            raise RuntimeError("FeatureCounters.step() found a feature without a gradient: call it after "
                               "loss.backward() and before optimizer.zero_grad()")
        return parameter.grad

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor the step writes (run.Run.step_state lists them)."""
        return {"steps": self.steps, "starved_steps": self.starved_steps, "starved_run": self.starved_run,
                "longest_starved": self.longest_starved, "dead_run": self.dead_run, "starved_now": self.starved_now}

    # ---- host side -----------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The counters on the host (a sync), as a checkpoint holds them."""
        return {name: tensor.detach().cpu().clone() for name, tensor in self.tensors().items()
                if name != "starved_now"}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """In place: the tensors keep their addresses."""
        for name, tensor in self.tensors().items():
            if name != "starved_now":
                tensor.copy_(state[name])

    def start_at(self, step: int) -> None:
        """Counts on from `step` with nothing counted before (a checkpoint from before the counters)."""
        self.steps.fill_(step)

    def _per_layer(self, flat: torch.Tensor) -> dict[str, np.ndarray]:
        return {feature.name: part.cpu().numpy()
                for feature, part in zip(self.features, torch.split(flat.detach(), self.sizes))}

    def history_row(self) -> dict[str, torch.Tensor]:
        """bn_history.npz's row for now: each layer's starved steps so far (CPU tensors; a sync)."""
        return {starvation.key(layer, starvation.STARVED_STEPS): torch.from_numpy(values.copy())
                for layer, values in self._per_layer(self.starved_steps).items()}

    def arrays(self) -> dict[str, np.ndarray]:
        """features.npz's counters: per layer, each feature's starved_steps, longest_starved and death_step."""
        state = {name: tensor.numpy() for name, tensor in self.state_dict().items()}
        return starvation.per_layer(state, {feature.name: size for feature, size in zip(self.features, self.sizes)})

    def summary(self) -> dict:
        """{steps, gamma_threshold, per_layer: {layer: features, dead, death_step_first / _median / _last,
        starved_pct_dead (before death), starved_pct_alive, longest_starved}} (rundir_format.starvation)."""
        return {**starvation.summary(self.arrays(), int(self.steps)), "gamma_threshold": self.gamma_threshold}
