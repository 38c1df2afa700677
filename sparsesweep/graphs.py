"""A pack's step as one CUDA graph: every captured run's train_step, each on its own CUDA stream, recorded
once and replayed every step (the eager step is launch-bound: ~5 ms of Python and kernel launches for well
under 1 ms of arithmetic at BasicNet's size).

What makes a step capturable (run.Run.train_step is written for it): its inputs live in fixed device buffers
that the host refills between replays (batches.EpochFeed, the WD factor), gradients keep their addresses
(a run that may be captured zeroes them in place), the optimizer's step count lives on the device (the Adam family's
`capturable`), and nothing reads a value back to the host. The LR is a float baked into the graph: a change
means capturing again (pack.py does, once or twice per run).

A graph that is wrong must never produce results silently: before a pack's first capture, self_check
compares a few eager steps with a few replays from the same state and the pack trains eagerly when they
disagree beyond a TF32-sized tolerance.
"""
from __future__ import annotations

import torch

WARMUP_STEPS = 3  # eager steps before a capture: cuDNN's autotuning and the optimizers' state allocation
CHECK_STEPS = 3
# Relative L2 distance allowed between the parameter updates of eager steps and of replays: TF32's 10-bit
# mantissa (~1e-3 per operation, compounded over a few steps), and fp32 rounding without it.
TOLERANCE = {True: 5e-2, False: 1e-4}


def setting(cfg) -> str:
    """performance.cuda_graph as auto, on or off (YAML reads a bare on/off as true/false)."""
    value = cfg.performance.cuda_graph
    return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


def why_not_capturable(run) -> str | None:
    """Why this run's step cannot be captured (one line for its log), or None."""
    if run.device.type != "cuda":
        return "it trains on the CPU"
    if not run.feed.capturable:
        return "its images are read by DataLoader workers (host work every step)"
    if run.feed.split.images.device != run.device:
        return "its images are not on the GPU (performance.data_on_device)"
    if run.cfg.performance.compile:
        return "performance.compile=true (torch.compile makes its own graphs)"
    if run.stochastic:
        return "its dropout draws from a per-run global RNG stream"
    return None


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


class GraphStep:
    """The runs' steps captured as one CUDA graph, each run on its own stream; calling it replays them."""

    def __init__(self, runs):
        self.runs = list(runs)
        self.streams = [torch.cuda.Stream(device=run.device) for run in self.runs]
        self.graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize()
        with torch.cuda.graph(self.graph):
            current = torch.cuda.current_stream()
            for run, stream in zip(self.runs, self.streams):
                stream.wait_stream(current)
                with torch.cuda.stream(stream):
                    run.train_step()
            for stream in self.streams:
                current.wait_stream(stream)

    def __call__(self) -> bool:
        self.graph.replay()
        return True


def capture(runs, log_failure) -> tuple[GraphStep | None, list]:
    """(graph of the runs that capture, runs that do not): the whole pack first; if that fails, each run
    alone finds the ones that cannot, which train eagerly (log_failure(run, error) says why)."""
    try:
        return GraphStep(runs), []
    except Exception:  # noqa: BLE001 (find out which run's step breaks capture)
        torch.cuda.synchronize()
    refused = []
    for run in runs:
        try:
            GraphStep([run])
        except Exception as error:  # noqa: BLE001
            torch.cuda.synchronize()
            log_failure(run, error)
            refused.append(run)
    rest = [run for run in runs if run not in refused]
    if not rest:
        return None, refused
    try:
        return GraphStep(rest), refused
    except Exception as error:  # noqa: BLE001 (each captures alone, not together: all train eagerly)
        torch.cuda.synchronize()
        for run in rest:
            log_failure(run, error)
        return None, runs


# ---- the self-check -----------------------------------------------------------------------------------

def state_tensors(run) -> dict[str, torch.Tensor]:
    """Every tensor a train_step changes: parameters and buffers, optimizer state, the feed's position,
    the running sums."""
    tensors = {f"model.{k}": v for k, v in run.model.state_dict(keep_vars=True).items()}
    for i, (param, state) in enumerate((p, run.optimizer.state[p]) for g in run.optimizer.param_groups
                                       for p in g["params"]):
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{i}.{key}"] = value
    tensors.update({"feed.position": run.feed.position, "loss_sum": run.loss_sum, "wrong": run.wrong})
    return {k: v.data if isinstance(v, torch.nn.Parameter) else v for k, v in tensors.items()}


def snapshot(runs) -> list[dict[str, torch.Tensor]]:
    return [{k: v.detach().clone() for k, v in state_tensors(run).items()} for run in runs]


@torch.no_grad()
def restore(runs, saved: list[dict[str, torch.Tensor]]) -> None:
    """In place, so that a graph captured on these tensors stays valid."""
    for run, state in zip(runs, saved):
        for key, tensor in state_tensors(run).items():
            tensor.copy_(state[key])


def parameters(runs) -> list[dict[str, torch.Tensor]]:
    return [{k: p.detach().clone() for k, p in run.model.named_parameters()} for run in runs]


def update_disagreement(start: dict, eager: dict, replayed: dict) -> tuple[float, str]:
    """(relative L2 distance between the two updates of a model's parameters, the worst tensor's name):
    ||eager - replayed|| / ||eager - start|| over all parameters together."""
    def squares(a, b):
        return sum(float((a[k].double() - b[k].double()).square().sum()) for k in start)
    distance, update = squares(eager, replayed) ** 0.5, squares(eager, start) ** 0.5
    worst = max(start, key=lambda k: float((eager[k] - replayed[k]).abs().max()))
    return (distance / update if update > 0 else float(distance > 0)), worst


def self_check(runs, step, tolerance: float, steps: int = CHECK_STEPS) -> list[str]:
    """Compares `steps` eager steps with `steps` calls of `step` (the runs' graph) from the same state, then
    puts every run back in that state (in place: the graph stays valid). Returns one line per run whose
    updates disagree beyond `tolerance`; none when the graph is right."""
    saved = snapshot(runs)
    eager = EagerStep(runs)
    for _ in range(steps):
        eager()
    after_eager = parameters(runs)
    restore(runs, saved)
    for _ in range(steps):
        step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    after_replay = parameters(runs)
    restore(runs, saved)
    problems = []
    for run, state, a, b in zip(runs, saved, after_eager, after_replay):
        disagreement, worst = update_disagreement({name: state[f"model.{name}"] for name in a}, a, b)
        if not disagreement <= tolerance:
            problems.append(f"run {run.run_id}: replayed steps differ from eager ones by {disagreement:.2g} "
                            f"(relative, > {tolerance:g}; most in {worst})")
    return problems
