"""A pack's step as one CUDA graph: every captured run's train_step, each on its own CUDA stream, recorded
once and replayed every step (at BasicNet's size the eager step is launch-bound: its Python and kernel
launches take far longer than its arithmetic).

What makes a step capturable (run.Run.train_step is written for it): its inputs live in fixed device buffers
that the host refills between replays (batches.EpochFeed, the WD factor), gradients keep their addresses
(zeroed in place), the optimizer's step count lives on the device (the Adam family's `capturable`), and
nothing reads a value back to the host. What cannot be captured is known before anything runs: from the
config (why_not_capturable_config: the launcher packs only such runs with pack_size=auto) and from the run's
parts (why_not_capturable, before its optimizer is built: only a run that may be captured pays for it). The
LR is a float baked into the graph: a change means capturing again (pack.py does, once or twice per run), on
the same streams and memory pool (GraphResources).

A graph that is wrong must never produce results silently: the pack's first capture is its probe, checked by
self_check against eager steps from the same state, tensor by tensor, before it trains anything, and against
the same steps without the regularization, the step's smallest term.

The capture runs with the runs' GPU current (a run on cuda:1 in a process where cuda:0 is current captures on
cuda:1), on the pack's own capture stream, and a capture that fails reports the error of the step that broke
it, with the stream that was current before current again (torch.cuda.graph raises the failed capture_end
over the step's error and leaves its capture stream current).

Everything here runs on the CPU too and is tested there, the capture against a stand-in of torch.cuda's
streams, devices and graphs; benchmarks/gpu_check.py checks real captures and replays on a GPU.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from sparsesweep.datasets import reads_image_folders
from sparsesweep.models import draws_randomness
from sparsesweep.optim import unregularized, why_step_not_capturable

WARMUP_STEPS = 3  # eager steps before a capture: cuDNN's autotuning and the optimizers' state allocation
CHECK_STEPS = 3
# The self-check's tolerance, per tensor: a replay may differ from an eager execution by NOISE_FACTOR times
# what two eager executions from the same state differ by on this device (nondeterministic kernels), or by
# UPDATE_FLOOR of the tensor's change over the checked steps (rounding, where the eager ones agree bit for
# bit). A graph that drops part of the step is off by far more: dropping an L2 term of 1e-4 moves some
# tensors' change by 10% over 3 steps of a smoke run, a missing BN update moves a running stat's by 100%.
NOISE_FACTOR = 10.0
UPDATE_FLOOR = 1e-3
# The regularizer is the step's smallest term and the one the paper is about: a dropped L2 or WD of 1e-6 moves
# a tensor by far less than UPDATE_FLOOR of its change (WD: about 5e-5 of it). So where the regularization
# (L2, decoupled WD, the optimizer's own weight_decay) moves a tensor, the check also takes steps without it,
# and a replay may be off by at most 1/REGULARIZER_MARGIN of what the regularization changes there: a graph
# that drops it is off by all of it.
REGULARIZER_MARGIN = 10.0
ON_CPU = "it trains on the CPU"  # the one reason not worth a log line above DEBUG


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
    """Why this run's step cannot be captured (one line for its log), or None; from its config, device, model
    and feed alone, so a run knows it before its optimizer is built (Run.capturable)."""
    if run.device.type != "cuda":
        return ON_CPU
    reason = why_not_capturable_config(run.cfg)
    if reason:
        return reason
    if not run.feed.capturable:
        return "its images are not on the GPU (performance.data_on_device)"
    if draws_randomness(run.model):
        return "its forward draws random numbers (dropout, stochastic depth) from a per-run global RNG stream"
    return short_epoch(run.feed.steps)


def short_epoch(steps_per_epoch: int) -> str | None:
    """Why an epoch of this many steps cannot be captured (its graph could never be checked), or None."""
    if steps_per_epoch < CHECK_STEPS:
        return (f"its epoch of {steps_per_epoch} step(s) is shorter than the graph's self-check ({CHECK_STEPS} "
                f"steps within one epoch)")
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
    """What a pack's captures share for its whole life, all on the runs' device: a CUDA stream per run (made at
    its first capture, kept for the next), a side stream for the eager warm-up (PyTorch's recipe for
    whole-network capture), the stream captures are recorded on, and one memory pool, which a new capture
    reuses once the graph it replaces is released."""

    def __init__(self, device: torch.device):
        self.device = device
        with torch.cuda.device(device):
            self.side = torch.cuda.Stream(device=device)
            self.capture = torch.cuda.Stream(device=device)
            self.pool = torch.cuda.graph_pool_handle()
        self.streams: dict[int, torch.cuda.Stream] = {}

    def stream(self, run) -> torch.cuda.Stream:
        if id(run) not in self.streams:
            self.streams[id(run)] = torch.cuda.Stream(device=self.device)
        return self.streams[id(run)]

    @contextlib.contextmanager
    def on_side_stream(self):
        current = torch.cuda.current_stream(self.device)
        self.side.wait_stream(current)
        with torch.cuda.stream(self.side):
            yield
        current.wait_stream(self.side)


@contextlib.contextmanager
def capturing(graph, resources: GraphResources):
    """Records what the block launches on the device into `graph` (torch.cuda.graph's capture on the pack's
    capture stream and pool, the runs' device current). When the block raises, that error is the one raised:
    ending a capture the block broke raises a second error, which is dropped. Whatever happens, the stream and
    device current before are current again."""
    with torch.cuda.device(resources.device):
        torch.cuda.synchronize(resources.device)
        torch.cuda.empty_cache()
        with torch.cuda.stream(resources.capture):
            graph.capture_begin(pool=resources.pool)
            try:
                yield
            except BaseException:
                with contextlib.suppress(Exception):  # the capture is void; the block's error says why
                    graph.capture_end()
                raise
            graph.capture_end()


class GraphStep:
    """The runs' steps captured as one CUDA graph, each run on its own stream; calling it replays them."""

    def __init__(self, runs, resources: GraphResources):
        self.runs = list(runs)
        self.graph = torch.cuda.CUDAGraph()
        with capturing(self.graph, resources):
            current = torch.cuda.current_stream(resources.device)
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


def disagreement(start: torch.Tensor, eager: torch.Tensor, again: torch.Tensor, replayed: torch.Tensor,
                 unregularized: torch.Tensor | None = None) -> tuple[float, float] | None:
    """None when the replay agrees with the eager execution, else (how far it is off, how far it may be),
    both as fractions of the tensor's change over the steps: see NOISE_FACTOR and UPDATE_FLOOR, and
    REGULARIZER_MARGIN where `unregularized` (the same steps without the regularization) differs from the eager
    ones. Integer tensors (positions, counts) must agree exactly."""
    if not eager.is_floating_point():
        return None if torch.equal(eager, replayed) else (float("inf"), 0.0)

    def norm(a, b):
        return float((a.double() - b.double()).norm())
    change, noise, off = norm(eager, start), norm(again, eager), norm(replayed, eager)
    floor = UPDATE_FLOOR * change
    if unregularized is not None and (effect := norm(eager, unregularized)) > 0:
        floor = min(floor, effect / REGULARIZER_MARGIN)
    allowed = max(NOISE_FACTOR * noise, floor)
    if off <= allowed:  # False for NaN too
        return None
    return (off / change if change else float("inf")), (allowed / change if change else 0.0)


@dataclass
class Disagreement:
    """A run whose replayed steps differ from its eager ones: in how many tensors, and the worst (by how much
    more than allowed), as fractions of that tensor's change over the checked steps."""
    run_id: str
    tensors: int
    worst: str
    off: float
    allowed: float
    steps: int

    def __str__(self) -> str:
        return (f"run {self.run_id}: replayed steps differ from eager ones in {self.tensors} tensor(s), most in "
                f"{self.worst}: by {self.off:.3g} of its change over {self.steps} steps (allowed {self.allowed:.3g})")


def self_check(runs, step, steps: int = CHECK_STEPS) -> list[Disagreement]:
    """Compares `steps` calls of `step` (the runs' graph) with `steps` eager steps from the same state, tensor
    by tensor (every tensor a step changes: Run.step_state), within what two eager executions from that state
    disagree by, and, where the runs are regularized, within a tenth of what the regularization changes (eager
    steps without it); then puts every run back in that state (in place: the graph stays valid). The caller
    makes sure the steps stay within the drawn epoch (room_for_check). Returns the runs that disagree; none
    when the graph is right."""
    start = snapshot(runs)

    def eager_steps() -> list[dict[str, torch.Tensor]]:
        for _ in range(steps):
            EagerStep(runs)()
        taken = snapshot(runs)
        restore(runs, start)
        return taken

    eager, again = eager_steps(), eager_steps()
    with contextlib.ExitStack() as plain:
        for run in runs:
            plain.enter_context(unregularized(run.optimizer, run.decay))
        without = eager_steps()
    for _ in range(steps):
        step()
    if any(run.device.type == "cuda" for run in runs):
        torch.cuda.synchronize()
    replayed = snapshot(runs)
    restore(runs, start)
    problems = []
    for run, *states in zip(runs, start, eager, again, replayed, without):
        off = {key: found for key in states[0]
               if (found := disagreement(*(state[key] for state in states))) is not None}
        if off:
            worst = max(off, key=lambda k: off[k][0] / off[k][1] if off[k][1] else float("inf"))
            problems.append(Disagreement(run.run_id, len(off), worst, *off[worst], steps))
    return problems
