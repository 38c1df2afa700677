"""A pack's step as one CUDA graph: every captured run's train_step, each on its own CUDA stream, recorded
once and replayed every step (the eager step is launch-bound: ~5 ms of Python and kernel launches for well
under 1 ms of arithmetic at BasicNet's size).

What makes a step capturable (run.Run.train_step is written for it): its inputs live in fixed device buffers
that the host refills between replays (batches.EpochFeed, the WD factor), gradients keep their addresses
(a run that may be captured zeroes them in place), the optimizer's step count lives on the device (the Adam family's
`capturable`), and nothing reads a value back to the host. What cannot be captured is known before anything
runs where it can be (why_not_capturable_config: the launcher packs only such runs with pack_size=auto).
The LR is a float baked into the graph: a change means capturing again (pack.py does, once or twice per run),
on the same streams and memory pool (GraphResources).

A graph that is wrong must never produce results silently: the pack's first capture is its probe, checked by
self_check against eager steps from the same state, tensor by tensor, before it trains anything.

Everything here but the capture and replay themselves (GraphStep) runs on the CPU too, and is tested there;
benchmarks/gpu_check.py checks the rest on a GPU.
"""
from __future__ import annotations

import contextlib

import torch

from sparsesweep.datasets import reads_image_folders
from sparsesweep.optim import why_step_not_capturable

WARMUP_STEPS = 3  # eager steps before a capture: cuDNN's autotuning and the optimizers' state allocation
CHECK_STEPS = 3
# The self-check's tolerance, per tensor: a replay may differ from an eager execution by NOISE_FACTOR times
# what two eager executions from the same state differ by on this device (nondeterministic kernels), or by
# UPDATE_FLOOR of the tensor's change over the checked steps (rounding, where the eager ones agree bit for
# bit). A graph that drops part of the step is off by far more: dropping an L2 term of 1e-4 moves some
# tensors' change by 10% over 3 steps of a smoke run, a missing BN update moves a running stat's by 100%.
NOISE_FACTOR = 10.0
UPDATE_FLOOR = 1e-3


def setting(cfg) -> str:
    """performance.cuda_graph as auto, on or off (YAML reads a bare on/off as true/false)."""
    value = cfg.performance.cuda_graph
    return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


def why_not_capturable_config(cfg) -> str | None:
    """Why a run of this config cannot be captured, as far as its config says (one line), or None."""
    if setting(cfg) == "off":
        return "performance.cuda_graph=off"
    if cfg.device == "cpu":
        return "device=cpu"
    if cfg.performance.data_on_device is False:
        return "performance.data_on_device=false (every step's batch crosses from the host)"
    if cfg.performance.compile:
        return "performance.compile=true (torch.compile makes its own graphs)"
    if reads_image_folders(cfg.dataset):
        return "its images are read by DataLoader workers (host work every step)"
    return why_step_not_capturable(cfg.optimizer)


def why_not_capturable(run) -> str | None:
    """Why this run's step cannot be captured (one line for its log), or None."""
    if run.device.type != "cuda":
        return "it trains on the CPU"
    reason = why_not_capturable_config(run.cfg)
    if reason:
        return reason
    if not run.feed.capturable:
        return "its images are not on the GPU (performance.data_on_device)"
    if run.stochastic:
        return "its forward draws random numbers (dropout, stochastic depth) from a per-run global RNG stream"
    return None


def room_for_check(runs, steps: int = CHECK_STEPS) -> bool:
    """Whether every run's drawn epoch has `steps` batches left: the check steps from the current position and
    must not read past the epoch's last batch (an index out of range on the device)."""
    return all(run.feed.steps - run.steps_done_in_epoch >= steps for run in runs)


class EagerStep:
    """One step of every run in turn; a run whose step raises leaves (Run.fail), the others go on."""

    def __init__(self, runs):
        self.runs = list(runs)

    def __call__(self) -> bool:
        """False when a run failed in this step."""
        everyone = True
        for run in self.runs:
            if run.status != "training":
                continue
            try:
                with run.own_rng():
                    run.train_step()
            except Exception as error:  # noqa: BLE001 (one bad run never takes down its pack)
                run.fail(error)
                everyone = False
        return everyone


class GraphResources:
    """What a pack's captures share for its whole life: a CUDA stream per run, a side stream for the eager
    warm-up (PyTorch's recipe for whole-network capture) and one memory pool, which a new capture reuses
    once the graph it replaces is released."""

    def __init__(self, device: torch.device):
        self.device = device
        self.side = torch.cuda.Stream(device=device)
        self.pool = torch.cuda.graph_pool_handle()
        self.streams: dict[int, torch.cuda.Stream] = {}

    def stream(self, run) -> torch.cuda.Stream:
        return self.streams.setdefault(id(run), torch.cuda.Stream(device=self.device))

    @contextlib.contextmanager
    def on_side_stream(self):
        current = torch.cuda.current_stream(self.device)
        self.side.wait_stream(current)
        with torch.cuda.stream(self.side):
            yield
        current.wait_stream(self.side)


class GraphStep:
    """The runs' steps captured as one CUDA graph, each run on its own stream; calling it replays them."""

    def __init__(self, runs, resources: GraphResources):
        self.runs = list(runs)
        self.graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize(resources.device)
        with torch.cuda.graph(self.graph, pool=resources.pool):
            current = torch.cuda.current_stream()
            for run in self.runs:
                stream = resources.stream(run)
                stream.wait_stream(current)
                with torch.cuda.stream(stream):
                    run.train_step()
            for run in self.runs:
                current.wait_stream(resources.stream(run))

    def __call__(self) -> bool:
        self.graph.replay()
        return True

    def release(self) -> None:
        """Frees the graph (its memory goes back to the pack's pool for the next capture)."""
        self.graph.reset()


def capture(runs, resources: GraphResources) -> tuple[GraphStep | None, str | None]:
    """(the runs' steps as one graph, None), or (None, why it failed in one line): one attempt, never retried."""
    try:
        return GraphStep(runs, resources), None
    except Exception as error:  # noqa: BLE001 (a step that breaks capture: the runs train eagerly)
        torch.cuda.synchronize(resources.device)
        return None, f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"


# ---- the self-check -----------------------------------------------------------------------------------

def snapshot(runs) -> list[dict[str, torch.Tensor]]:
    return [{k: v.detach().clone() for k, v in run.step_state().items()} for run in runs]


@torch.no_grad()
def restore(runs, saved: list[dict[str, torch.Tensor]]) -> None:
    """In place, so that a graph captured on these tensors stays valid."""
    for run, state in zip(runs, saved):
        for key, tensor in run.step_state().items():
            tensor.copy_(state[key])


def disagreement(start: torch.Tensor, eager: torch.Tensor, again: torch.Tensor,
                 replayed: torch.Tensor) -> tuple[float, float] | None:
    """None when the replay agrees with the eager execution, else (how far it is off, how far it may be),
    both as fractions of the tensor's change over the steps: see NOISE_FACTOR and UPDATE_FLOOR. Integer
    tensors (positions, counts) must agree exactly."""
    if not eager.is_floating_point():
        return None if torch.equal(eager, replayed) else (float("inf"), 0.0)
    def norm(a, b):
        return float((a.double() - b.double()).norm())
    change, noise, off = norm(eager, start), norm(again, eager), norm(replayed, eager)
    allowed = max(NOISE_FACTOR * noise, UPDATE_FLOOR * change)
    if off <= allowed:  # False for NaN too
        return None
    return (off / change if change else float("inf")), (allowed / change if change else 0.0)


def self_check(runs, step, steps: int = CHECK_STEPS) -> list[str]:
    """Compares `steps` calls of `step` (the runs' graph) with `steps` eager steps from the same state, tensor
    by tensor (every tensor a step changes: Run.step_state), within what two eager executions from that state
    disagree by; then puts every run back in that state (in place: the graph stays valid). The caller makes
    sure the steps stay within the drawn epoch (room_for_check). Returns one line per run that disagrees;
    none when the graph is right."""
    start = snapshot(runs)
    eager = []
    for _ in range(2):
        for _ in range(steps):
            EagerStep(runs)()
        eager.append(snapshot(runs))
        restore(runs, start)
    for _ in range(steps):
        step()
    if any(run.device.type == "cuda" for run in runs):
        torch.cuda.synchronize()
    replayed = snapshot(runs)
    restore(runs, start)
    problems = []
    for run, before, first, second, graph in zip(runs, start, *eager, replayed):
        off = {key: found for key in before
               if (found := disagreement(before[key], first[key], second[key], graph[key])) is not None}
        if off:
            key = max(off, key=lambda k: off[k][0])
            problems.append(f"run {run.run_id}: replayed steps differ from eager ones in {len(off)} tensor(s), most "
                            f"in {key}: by {off[key][0]:.3g} of its change over {steps} steps (allowed "
                            f"{off[key][1]:.3g})")
    return problems
