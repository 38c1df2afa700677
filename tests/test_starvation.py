"""The starvation counters (starved_steps, longest_starved, death_step) against a hand-built network whose
starved features and death steps are known by construction, and what is derived from them."""
import signal

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import SMOKE, run_state
from rundir_format import starvation
from sparsesweep import interrupts, pack, rundir
from sparsesweep.starvation import FeatureCounters
from test_rundir import signal_at_step

STEPS = 20
# Feature 3 fires in these steps only; feature 4 in this one only.
FIRES_3, FIRES_4 = {1, 2, 8}, 15
SHRINK_2 = 0.5  # feature 2's |gamma| halves every step: 2**-t after step t, below 1e-3 first after step 10


class HandBuilt(nn.Module):
    """A 1x1 identity conv, BatchNorm, ReLU, mean, a linear head: feature k sees input channel k alone.
    In training mode BN maps a channel that is constant over the batch to exactly its shift β: with β < 0 the
    feature fires nowhere and gets exactly no gradient. A channel that varies over the batch of 4 reaches
    x̂ = sqrt(3) ≈ 1.73 at its largest value ([0, 0, 0, 3]) or 1.34 ([1, 2, 3, 4])."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(6, 6, 1, bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.head = nn.Linear(6, 3, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(6).view(6, 6, 1, 1))
            # gamma, beta per feature: 0 always fires; 1 never (γ stays 1); 2 never, γ shrinks; 3 fires in
            # FIRES_3; 4 has a small γ and fires once; 5 has a small γ and always fires.
            self.bn.weight.copy_(torch.tensor([1.0, 1.0, 1.0, 1.0, 1e-4, 1e-4]))
            self.bn.bias.copy_(torch.tensor([5.0, -1.0, -1.0, -1.0, -1e-5, 1.0]))
            # Distinct weights per class: a firing feature's loss gradient is not zero.
            self.head.weight.copy_(torch.arange(1.0, 19.0).view(3, 6) / 10)

    def forward(self, x):
        return self.head(F.relu(self.bn(self.conv(x))).mean((2, 3)))


def batch(step: int) -> torch.Tensor:
    x = torch.zeros(4, 6, 1, 1)
    ramp, spike = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([0.0, 0.0, 0.0, 3.0])
    x[:, 0, 0, 0] = x[:, 5, 0, 0] = ramp
    if step in FIRES_3:
        x[:, 3, 0, 0] = spike
    if step == FIRES_4:
        x[:, 4, 0, 0] = spike
    return x


# By construction, per feature: starved steps, longest starved run, death step.
EXPECTED = {"starved_steps": [0, STEPS, STEPS, STEPS - len(FIRES_3), STEPS - 1, 0],
            "longest_starved": [0, STEPS, STEPS, STEPS - 8, FIRES_4 - 1, 0],
            "death_step": [-1, -1, 10, -1, FIRES_4 + 1, -1]}


def train_hand_built(model, counters, steps=STEPS, first=1):
    """A user's loop: the 'optimizer' is an L2-only step on feature 2, which gets no loss gradient (SGD's
    θ ← θ - lr·λ·θ with lr·λ = 1/2); nothing else changes, so which features fire is what batch() says."""
    y = torch.tensor([0, 1, 2, 0])
    for step in range(first, first + steps):
        model.zero_grad()
        F.cross_entropy(model(batch(step)), y).backward()
        with torch.no_grad():
            model.bn.weight[2] *= SHRINK_2
        counters.step()


def test_the_counters_of_a_hand_built_network_are_those_of_its_construction():
    model = HandBuilt()
    counters = FeatureCounters(model)
    train_hand_built(model, counters)
    arrays = counters.arrays()
    assert set(arrays) == {f"conv_{name}" for name in EXPECTED}
    for name, expected in EXPECTED.items():
        assert arrays[f"conv_{name}"].tolist() == expected, name
    # 2**-9 > 1e-3 > 2**-10: dead from step 10 on, as its death step says
    assert 2.0 ** -9 > 1e-3 > 2.0 ** -10
    assert model.bn.weight[2].item() == 2.0 ** -STEPS


def test_the_hook_object_of_a_users_loop_summarizes_per_layer():
    from sparsesweep import FeatureCounters as exported

    model = HandBuilt()
    counters = exported(model)
    train_hand_built(model, counters)
    summary = counters.summary()
    assert summary["steps"] == STEPS and summary["gamma_threshold"] == 1e-3
    assert summary["per_layer"]["conv"] == starvation.layer_summary(*EXPECTED.values(), STEPS)
    from sparsesweep import measure_sparsity

    measured = measure_sparsity(model, [batch(1), batch(8)], counters=counters)
    assert measured["starvation"] == summary and measured["by_gamma"]["per_layer_inactive"] == {"conv": 3}  # features 2, 4, 5


def test_a_resumed_counter_ends_like_an_uninterrupted_one():
    model = HandBuilt()
    straight = FeatureCounters(model)
    train_hand_built(model, straight)
    first, second = HandBuilt(), HandBuilt()
    counters = FeatureCounters(first)
    train_hand_built(first, counters, steps=9)
    resumed = FeatureCounters(second)
    second.load_state_dict(first.state_dict())
    resumed.load_state_dict(counters.state_dict())
    train_hand_built(second, resumed, steps=STEPS - 9, first=10)
    for key, value in straight.arrays().items():
        assert np.array_equal(resumed.arrays()[key], value), key


def test_the_starved_share_before_death_follows_from_the_counters():
    share = starvation.starved_share(EXPECTED["starved_steps"], EXPECTED["death_step"], STEPS)
    # f2: starved in all 9 steps before step 10; f3: 17 of 20; f4: 14 of the 15 steps before step 16
    assert share.tolist() == [0.0, 1.0, 1.0, 17 / 20, 14 / 15, 0.0]
    summary = starvation.layer_summary(EXPECTED["starved_steps"], EXPECTED["longest_starved"],
                                       EXPECTED["death_step"], STEPS)
    assert summary == {"features": 6, "dead": 2, "death_step_first": 10, "death_step_median": 13.0,
                       "death_step_last": 16, "starved_pct_dead": pytest.approx(100 * (1 + 14 / 15) / 2),
                       "starved_pct_alive": pytest.approx(100 * (0 + 1 + 17 / 20 + 0) / 4), "longest_starved": 20}


def test_a_feature_dead_from_the_first_step_has_no_share():
    assert np.isnan(starvation.starved_share([5], [1], 5)[0])


def test_counting_before_backward_says_what_to_do():
    counters = FeatureCounters(HandBuilt())
    with pytest.raises(RuntimeError, match=r"after loss.backward\(\)"):
        counters.step()


# A smoke run whose features starve within its 60 steps (none in the first epoch, many in the second): a fast
# Adam with strong L2. One thread: bitwise comparisons hold the thread count fixed.
STARVING = [*SMOKE, "seed=7", "threads=1", "optimizer=adam", "optimizer.lr=0.05", "regularizer.l2=2e-2"]


@pytest.mark.slow
def test_sigterm_then_resume_ends_with_the_counters_of_an_uninterrupted_run(make_config, tmp_path, monkeypatch):
    cfg = make_config(STARVING)
    pack.train(cfg, tmp_path / "straight")
    signal_at_step(monkeypatch, 25, signal.SIGTERM)
    with pytest.raises(interrupts.Interrupted, match="SIGTERM"):
        pack.train(cfg, tmp_path / "resumed")
    monkeypatch.undo()
    saved = rundir.load_checkpoint(tmp_path / "resumed", rundir.run_identity(cfg), "cpu")[1]
    assert saved["step"] == 25 and saved["counters"]["steps"].item() == 25
    assert saved["counters"]["starved_steps"].sum() > 0  # the counters carried over are not all zero
    pack.train(cfg, tmp_path / "resumed")
    assert run_state(tmp_path / "straight") == run_state(tmp_path / "resumed")  # features.npz's counters too
    features, history = np.load(tmp_path / "resumed" / "features.npz"), np.load(tmp_path / "resumed" / "bn_history.npz")
    starved = sum(int(features[starvation.key(layer, starvation.STARVED_STEPS)].sum())
                  for layer in starvation.layers(features))
    assert starved > 0  # the L2 the optimizer adds to the gradients is not taken for a loss gradient
    assert history["step"].tolist() == [0, 20, 40, 60]
    assert int(history["C7_starved_steps"][-1].sum()) == int(features["C7_starved_steps"].sum())
