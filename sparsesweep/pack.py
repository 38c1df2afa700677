"""The loop over a pack: K runs stepped in lockstep in one process until each has finished, diverged or
failed. A single run (`python -m sparsesweep ...`) is a pack of one: there is one training loop.

Between host events (an epoch's end, an LR change, a progress line, a periodic checkpoint, a stop signal)
the loop only steps the pack: each run's train_step in turn, or on a GPU one replay of a CUDA graph holding
every captured run's step (graphs.py). The pack's first capture is its probe: what it captures (self-checked)
trains in the graph for the pack's life, the rest eagerly; nothing is tried twice. A pack that pack_size=auto
formed trains together only when its probe captured every run: otherwise each run leaves at a checkpoint to
train in a process of its own (sparsesweep.apart), never K eager runs in one process. A run that leaves
(finished, diverged, failed) leaves the others untouched: the rest are captured again and go on. Runs that
share a dataset config share one copy of its data on the device.
"""
from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from omegaconf import OmegaConf

from sparsesweep import assemble, graphs, interrupts, validate
from sparsesweep.errors import ConfigError
from sparsesweep.rundir import open_directory
from sparsesweep.run import DIVERGED, TRAINED, TRAINING, Run

log = logging.getLogger("sparsesweep")

# What may differ between the runs of one pack: nothing here changes a shape, the data or the step count.
# (Not progress_interval_s or checkpoint_interval_min: a pack checks and saves at its shortest interval, which
# would change when a packed diverging run's divergence is caught, and with it the `iterations` its results record.)
PACK_FREE_KEYS = ("optimizer", "regularizer", "seed", "logger", "prune")


def pack_key(cfg) -> str:
    """Runs with equal keys may share a pack: the same model and shape, dataset, batch size, schedule and
    step count, measurement and performance settings."""
    plain = OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k not in PACK_FREE_KEYS + ("hydra",)]),
                                   resolve=True)
    return json.dumps(plain, sort_keys=True)


class TrainApart(Exception):
    """The run left a pack that pack_size=auto formed, at a checkpoint, because the pack's graph probe did not
    capture every run: it trains on in a process of its own (not a failure)."""


@dataclass
class RunSpec:
    cfg: object
    out_dir: Path
    overrides: list = field(default_factory=list)
    on_open: Callable[[], None] | None = None  # called once the directory is known to be this run's
    log: logging.Logger = log
    # called with the error as soon as the run fails (at opening or when it leaves its pack), while the
    # others may train on for hours: its failure is on record then, not only once the whole pack has ended
    on_failure: Callable[[BaseException], None] | None = None


def train(cfg, out_dir: Path, overrides=(), on_open=None) -> dict:
    """One run, a pack of one: trains, measures and writes the run directory; returns the results.json content.
    A directory holding another run's state is refused (rundir.RunDirConflict), one another process trains too
    (rundir.RunDirBusy); one this run already finished is returned as it is."""
    results, error = train_runs([RunSpec(cfg, Path(out_dir), list(overrides), on_open)])[0]
    if error is not None:
        raise error
    return results


def train_runs(specs: list[RunSpec], apart_unless_captured: bool = False
               ) -> list[tuple[dict | None, BaseException | None]]:
    """Opens every spec's run and trains them all as one pack; per spec, (its results, None) or (None, the
    error that stopped it, at opening or in training; TrainApart: it is to train in a process of its own,
    which apart_unless_captured (pack_size=auto) asks for). A stop signal ends the whole pack with every
    run's state saved (interrupts.Interrupted)."""
    outcomes: list = [(None, None)] * len(specs)
    with interrupts.StopSignals() as stops, contextlib.ExitStack() as pack_resources:
        runs, datasets = {}, {}
        for number, spec in enumerate(specs):
            resources = pack_resources.enter_context(contextlib.ExitStack())
            try:
                validate.check_config(spec.cfg)
                shared = next((n for n in range(number) if Path(specs[n].out_dir) == Path(spec.out_dir)), None)
                if shared is not None:
                    raise ConfigError(f"{spec.out_dir} is also the directory of run #{shared} of this pack: a "
                                      f"directory holds one run; give each its own (hydra.sweep.subdir)")
                run_id, finished = open_directory(spec.cfg, Path(spec.out_dir), spec.overrides, spec.on_open,
                                                  resources)
                if finished:
                    spec.log.info("run %s is already %s in %s: nothing to do", finished["run_id"], finished["status"],
                                  spec.out_dir)
                    outcomes[number] = (finished, None)
                    resources.close()
                    continue
                runs[number] = open_run(spec, run_id, resources, datasets, first=not runs)
            except interrupts.Interrupted:
                raise
            except Exception as error:  # noqa: BLE001 (one bad run never takes down a pack)
                resources.close()
                outcomes[number] = (None, error)
                if spec.on_failure:
                    spec.on_failure(error)
        callbacks = {id(run): specs[number].on_failure for number, run in runs.items()}

        def failed(run: Run) -> None:
            if callbacks[id(run)]:
                callbacks[id(run)](run.error)

        train_pack(list(runs.values()), stops, on_failure=failed,
                   apart_unless_captured=apart_unless_captured and len(runs) > 1)
    for number, run in runs.items():
        outcomes[number] = (run.results, run.error)
    return outcomes


def open_run(spec: RunSpec, run_id: str, resources, datasets: dict, first: bool) -> Run:
    cfg = spec.cfg
    device = assemble.pick_device(cfg.device)
    if first:  # process-wide settings: equal for every run of a pack (pack_key)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels once
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = bool(cfg.performance.tf32)
    key = json.dumps([OmegaConf.to_container(cfg.dataset, resolve=True), str(device), cfg.performance.data_on_device])
    if key not in datasets:
        datasets[key] = assemble.data_for(cfg, device)
    return Run(cfg, run_id, Path(spec.out_dir), spec.overrides, datasets[key], device, log=spec.log,
               resources=resources)


def train_pack(runs: list[Run], stops: interrupts.StopSignals,
               on_failure: Callable[[Run], object] | None = None, apart_unless_captured: bool = False) -> None:
    """Steps the runs until every one has finished (results written), diverged, failed or, with
    apart_unless_captured, left to train apart (a checkpoint saved, its error TrainApart); on_failure(run)
    as a run leaves with an error."""
    if not runs:
        return
    progress_s = min(run.cfg.progress_interval_s for run in runs)
    checkpoint_s = 60 * min(run.cfg.checkpoint_interval_min for run in runs)
    stepper = PackStepper(runs)
    active = list(runs)
    last_progress = last_checkpoint = time.monotonic()
    stops.deferring = True  # from here a stop signal waits for the step's end and saves that step
    while active:
        training = [run for run in active if run.status == TRAINING]
        apart = apart_unless_captured and stepper.refusal is not None
        steps = 0 if apart else min((run.steps_to_boundary() for run in training), default=0)
        taken, started = 0, time.monotonic()
        while taken < steps:
            everyone = stepper(training)
            taken += 1
            now = time.monotonic()
            if (not everyone or stops.pending or (apart_unless_captured and stepper.refusal is not None)
                    or now - last_progress > progress_s or now - last_checkpoint > checkpoint_s):
                break
        if training and training[0].device.type == "cuda":
            torch.cuda.synchronize(training[0].device)  # the steps' device work, not just their queueing
        for run in training:
            run.progress.share_s += (time.monotonic() - started) / len(training)
        training = [run for run in training if run.status == TRAINING]
        for run in training:
            if run.count_steps(taken):
                stepper.invalidate()  # the LR is baked into a captured step
        if apart_unless_captured and stepper.refusal is not None:
            leave_apart(training, stepper.refusal)
        for run in training:
            host_work(run, run.end_epoch_if_due)
        now = time.monotonic()
        if now - last_progress > progress_s:
            last_progress = now
            for run in [run for run in active if run.status == TRAINING and run.steps_done_in_epoch]:
                host_work(run, run.check_progress)
        for run in [run for run in active if run.status in (TRAINED, DIVERGED)]:
            host_work(run, run.finish)
        stopping = stops.pending  # a signal from here on waits for the next round, which saves its step
        if stopping or now - last_checkpoint > checkpoint_s:
            last_checkpoint = now
            for run in [run for run in active if run.status == TRAINING]:
                host_work(run, run.save)
            if stopping:
                for run in [run for run in active if run.status == TRAINING]:
                    run.log.warning("%s at epoch %d, step %d: checkpoint saved", interrupts.signal_name(stops.pending),
                                    run.progress.epoch + 1, run.progress.step)
        left = [run for run in active if run.status != TRAINING]
        for run in (run for run in left if run.error is not None and not isinstance(run.error, TrainApart)):
            if len(runs) > 1:
                run.log.info("run %s leaves its pack (%s: %s); the others go on", run.run_id,
                             type(run.error).__name__, run.error)
            if on_failure:
                on_failure(run)
        if left:
            active = [run for run in active if run.status == TRAINING]
            stepper.invalidate()
        if stopping:  # after the failures are on record
            stops.act()
    stops.deferring = False  # every run's results are written: a stop from here loses nothing


def leave_apart(runs: list[Run], refusal: str) -> None:
    """Each run saves its state and leaves the pack, to train on in a process of its own."""
    log.info("a pack of %d runs: %s: each trains in a process of its own (pack_size=auto packs only runs its "
             "graph captures)", len(runs), refusal)
    for run in runs:
        host_work(run, run.save)
        if run.status == TRAINING:
            run.log.info("run %s leaves its pack at step %d (checkpoint saved) to train in a process of its own",
                         run.run_id, run.progress.step)
            run.fail(TrainApart(refusal))


def host_work(run: Run, work: Callable[[], object]) -> None:
    """A run's host work, charged to its share of the time; an error in it fails that run alone."""
    started = time.monotonic()
    try:
        work()
    except interrupts.Interrupted:
        raise
    except Exception as error:  # noqa: BLE001 (one bad run never takes down its pack)
        run.fail(error)
    finally:
        run.progress.share_s += time.monotonic() - started


class PackStepper:
    """The pack's step: eager for the first WARMUP_STEPS, then (on a GPU, performance.cuda_graph auto|on) one
    graph replay for the runs that capture plus eager steps for the rest. The first capture is the pack's
    probe, self-checked before it trains anything; a run it does not capture, or that cannot be captured at all
    (graphs.why_not_capturable, an epoch too short to check included), trains eagerly for good (its log says
    why, once) and `refusal` says why the pack was not captured whole. Captured again, on the same streams and
    memory pool, whenever invalidated: a run left, or an LR changed."""

    def __init__(self, runs: list[Run]):
        self.eager_only: set[int] = set()  # ids of runs that train eagerly for good
        self.refusal: str | None = None    # why the pack is not captured whole (None: it is, or not yet probed)
        for run in runs:
            reason = graphs.why_not_capturable(run)
            if reason:
                self._eager_for_good(run, reason, quiet=reason == graphs.ON_CPU or graphs.setting(run.cfg) == "off")
        self.steps_taken, self.probed, self.rebuild_next = 0, False, False
        self.step, self.graph, self.resources = None, None, None

    def invalidate(self) -> None:
        self.step = None

    def __call__(self, training: list[Run]) -> bool:
        """One step of every training run; False when one of them failed in it."""
        if self.step is None:
            self.step = self._build(training)
        everyone = self.step()
        self.steps_taken += 1
        if self.steps_taken == graphs.WARMUP_STEPS or not everyone or self.rebuild_next:
            self.invalidate()  # warmed up: capture now; or a run left; or the probe waits for room
        return everyone

    def _build(self, training: list[Run]) -> Callable[[], bool]:
        if self.graph is not None:
            self.graph.release()
            self.graph = None
        self.rebuild_next = False
        candidates = [run for run in training if id(run) not in self.eager_only]
        eager = graphs.EagerStep(training)
        if not candidates:
            return eager
        if self.resources is None:
            self.resources = graphs.GraphResources(candidates[0].device)
        if self.steps_taken < graphs.WARMUP_STEPS:
            def warmup() -> bool:
                with self.resources.on_side_stream():
                    return eager()
            return warmup
        if not self.probed and not graphs.room_for_check(candidates):
            self.rebuild_next = True  # too few batches left in an epoch to check on: probe at a later step
            return eager
        graph, reason = graphs.capture(candidates, self.resources)
        if graph is not None and not self.probed:
            problems = graphs.self_check(candidates, graph)
            if problems:
                graph.release()
                graph, reason = None, f"the CUDA graph's self-check failed ({len(problems)} of {len(candidates)} " \
                                      f"runs): {problems[0]}"
            else:
                for run in candidates:
                    run.log.info("run %s: steps captured in a CUDA graph (self-checked against %d eager steps, every "
                                 "tensor)", run.run_id, graphs.CHECK_STEPS)
        self.probed = True
        if graph is None:  # one attempt: nothing is tried twice
            for run in candidates:
                self._eager_for_good(run, f"its step could not be captured ({reason})")
            return eager
        self.graph = graph
        rest = graphs.EagerStep([run for run in training if run not in candidates])

        def replay_and_rest() -> bool:
            graph()
            for run in candidates:
                run.progress.graph_steps += 1
            return rest()
        return replay_and_rest

    def _eager_for_good(self, run: Run, reason: str, quiet: bool = False) -> None:
        self.eager_only.add(id(run))
        self.refusal = self.refusal or reason
        run.train_eagerly()
        level = logging.DEBUG if quiet else logging.WARNING if graphs.setting(run.cfg) == "on" else logging.INFO
        run.log.log(level, "run %s: not captured in a CUDA graph: %s; it trains eagerly", run.run_id, reason)
