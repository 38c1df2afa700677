"""One run's state and life: open (or resume) its directory, train steps, end an epoch, finish.

Which runs step when is pack.py's: a run does not know whether it trains alone or with others. Its step
reads and writes only its own tensors (model, optimizer, training feed, running sums, WD factor), all on
its device, with no host sync, so that K runs stepped together in one process give exactly what each gives
alone, and a CUDA graph can replay the step.

Determinism (CPU): the model is initialised from `seed`; epoch e shuffles and augments from its own generator
seeded by (seed, e), drawn whole when the epoch starts, so a run resumed from a checkpoint taken anywhere
in epoch e redraws that epoch and continues exactly as the uninterrupted run would.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from sparsesweep import assemble, loggers, rundir
from sparsesweep.batches import shuffle_seed, training_feed
from sparsesweep.datasets import Dataset
from sparsesweep.errors import ConfigError
from sparsesweep.measure import bn_snapshot, evaluate, final_measurements, gamma_sparsity_pct
from sparsesweep.models import draws_randomness
from sparsesweep.optim import DecoupledDecay, build_optimizer, coefficient, plan_schedule, set_lr

TRAINING, TRAINED, COMPLETED, DIVERGED, FAILED = "training", "trained", "completed", "diverged", "failed"


class RunDirConflict(ConfigError):
    def __init__(self, out_dir: Path, foreign: dict, cfg, run_id: str):
        differences = rundir.config_differences(foreign.get("config") or {}, rundir.run_config(cfg))
        super().__init__(f"{out_dir} holds run {foreign['run_id']} of another config ({'; '.join(differences[:3])}"
                         f"{' ...' if len(differences) > 3 else ''}), not this one ({run_id}): nothing was "
                         f"changed; train it in a new directory (hydra.run.dir=... or hydra.sweep.dir=...)")


def open_directory(cfg, out_dir: Path, overrides, on_open, resources: contextlib.ExitStack) -> dict | None:
    """Claims out_dir for this run: locks it for the life of `resources`, refuses another run's directory
    (RunDirConflict) and one another process trains (RunDirBusy); returns the results of a run this
    directory already finished (nothing to do), else None once identity.json is written and on_open()
    (the entry point writes Hydra's .hydra/ then) called."""
    out_dir.mkdir(parents=True, exist_ok=True)
    run_id = rundir.run_identity(cfg)
    resources.enter_context(rundir.locked(out_dir))
    foreign = rundir.foreign_run(out_dir, run_id)
    if foreign:
        raise RunDirConflict(out_dir, foreign, cfg, run_id)
    finished = rundir.read_json(out_dir / rundir.RESULTS)
    if finished.get("status") in rundir.FINISHED and finished.get("run_id") == run_id:
        return finished
    rundir.write_identity(out_dir, run_id, cfg, overrides)
    if on_open:
        on_open()
    return None


class Run:
    """A run whose directory is open (open_directory), from its first step or its latest checkpoint."""

    def __init__(self, cfg, out_dir: Path, overrides, data: Dataset, device: torch.device, capturable: bool,
                 log: logging.Logger, resources: contextlib.ExitStack):
        self.cfg, self.out_dir, self.overrides, self.data, self.device = cfg, Path(out_dir), list(overrides), data, device
        self.log, self.resources, self.capturable = log, resources, capturable
        self.run_id = rundir.run_identity(cfg)
        self.model = assemble.model_for(cfg, data, device)
        # Dropout (VGG's ImageNet head) and stochastic depth draw from the global RNG: each run keeps its own
        # stream of it, which continues from its model's initialisation as it would alone.
        self.stochastic = draws_randomness(self.model)
        self.rng = torch.get_rng_state() if self.stochastic else None
        self.cuda_rng = torch.cuda.get_rng_state(device) if self.stochastic and device.type == "cuda" else None
        # The compiled module shares the parameters; checkpoints, hooks and evaluation use the plain one.
        self.forward = torch.compile(self.model) if cfg.performance.compile else self.model
        self.optimizer = build_optimizer(cfg.optimizer, cfg.regularizer, self.model, capturable=capturable)
        self.plan = plan_schedule(cfg.schedule, len(data.train), cfg.batch_size)
        self.feed = training_feed(data, cfg.batch_size, device, assemble.memory_format(cfg))
        self.loss_sum = torch.zeros((), device=device)
        self.wrong = torch.zeros((), device=device, dtype=torch.long)
        self.epoch, self.step, self.elapsed = 0, 0, 0.0
        # Its share of its process's time (pack.train_pack charges it): 1/n of each step n runs took together,
        # all of its own host work: a sweep's shares add up to about the time its processes trained.
        self.share_s = 0.0
        self.metrics, self.bn_history = [], [bn_snapshot(self.model)]
        self.status, self.error, self.results = TRAINING, None, None
        within_epoch = self._resume()
        set_lr(self.optimizer, self.plan, cfg.schedule, self.step)
        self.decay = DecoupledDecay(self.optimizer, device)
        self.loggers = loggers.RunLoggers(cfg, self.out_dir, first_epoch=self.epoch + 1)
        self.log.info("run %s: %s on %s (%d train / %d test, %d classes), %s + %s %.3g, batch %d, %d steps in %d "
                      "epochs, %d parameters, %s", self.run_id, cfg.model.name, data.name, len(data.train),
                      len(data.test), data.num_classes, cfg.optimizer.name, cfg.regularizer.name,
                      coefficient(cfg.regularizer), cfg.batch_size, self.plan.total_steps, self.plan.epochs,
                      sum(p.numel() for p in self.model.parameters()), device)
        if "CUDA_VISIBLE_DEVICES" in os.environ:  # set per job by the local launcher
            self.log.info("CUDA_VISIBLE_DEVICES=%s", os.environ["CUDA_VISIBLE_DEVICES"])
        self.model.train()
        if self.step < self.plan.total_steps:
            self._start_epoch(within_epoch)
            self._write_progress(None)
        else:  # stopped after its last step, before its results were written
            self.status = TRAINED

    def _resume(self) -> dict | None:
        """Loads the latest readable checkpoint, if any; returns its within-epoch sums (None at an epoch end)."""
        resumed = rundir.load_checkpoint(self.out_dir, self.run_id, self.device)
        if not resumed:
            return None
        path, state = resumed
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.step, self.elapsed = state["epoch"], state["step"], state["elapsed"]
        self.share_s = state.get("share_s", state["elapsed"])  # a checkpoint from before shares: its epochs' clock
        self.metrics, self.bn_history = state["metrics"], state["bn_history"]
        if self.stochastic:
            self.rng = state["rng"].cpu()
            if self.device.type == "cuda":
                self.cuda_rng = state["cuda_rng"].cpu()
        self.log.info("resuming from %s: epoch %d, step %d", path, self.epoch, self.step)
        return state["within_epoch"]

    # ---- the step: device work only ---------------------------------------------------------------------

    def train_step(self) -> None:
        """One optimizer step on the next batch. No host sync: a CUDA graph may capture it as it is."""
        x, y = self.feed.next_batch()
        logits = self.forward(x)
        loss = F.cross_entropy(logits, y)
        # A captured graph replays on the gradients' addresses, so a run that may be captured keeps them
        # (zeroed); otherwise dropping them is cheaper (backward writes them instead of adding to zeros).
        self.optimizer.zero_grad(set_to_none=not self.capturable)
        loss.backward()
        self.optimizer.step()
        self.decay.apply()
        # A NaN/inf loss poisons the sum. Every training batch is full, so the mean of batch means is per image.
        self.loss_sum += loss.detach()
        self.wrong += (logits.detach().argmax(1) != y).sum()

    def own_rng(self):
        """A context within which the global RNG is this run's stream (dropout); nothing to swap otherwise."""
        return self._swapped_rng() if self.stochastic else contextlib.nullcontext()

    @contextlib.contextmanager
    def _swapped_rng(self):
        saved = torch.get_rng_state()
        torch.set_rng_state(self.rng)
        if self.cuda_rng is not None:
            saved_cuda = torch.cuda.get_rng_state(self.device)
            torch.cuda.set_rng_state(self.cuda_rng, self.device)
        try:
            yield
        finally:
            self.rng = torch.get_rng_state()
            torch.set_rng_state(saved)
            if self.cuda_rng is not None:
                self.cuda_rng = torch.cuda.get_rng_state(self.device)
                torch.cuda.set_rng_state(saved_cuda, self.device)

    # ---- host work between steps ------------------------------------------------------------------------

    def _start_epoch(self, within_epoch: dict | None) -> None:
        """Draws the epoch (from a checkpoint taken within it: skips the batches done, with their sums)."""
        self.done = self.step - self.epoch * self.plan.steps_per_epoch
        sums = within_epoch or {"loss_sum": 0.0, "wrong": 0, "elapsed": 0.0,
                                "lr": self.optimizer.param_groups[0]["lr"]}
        self.feed.draw(shuffle_seed(self.cfg.seed, self.epoch), self.done)
        self.loss_sum.fill_(sums["loss_sum"])
        self.wrong.fill_(sums["wrong"])
        self.epoch_lr = sums["lr"]  # the LR the epoch started with, which metrics.jsonl records
        self.epoch_start = time.monotonic() - sums["elapsed"]
        self.epoch_end = min((self.epoch + 1) * self.plan.steps_per_epoch, self.plan.total_steps)

    def steps_to_boundary(self) -> int:
        """Steps until the host has work for this run: its epoch's end or an LR change."""
        boundary = self.epoch_end if self.step >= self.plan.decay_step else min(self.epoch_end, self.plan.decay_step)
        return boundary - self.step

    def advanced(self, steps: int) -> bool:
        """Bookkeeping after `steps` train_steps (at most steps_to_boundary()); True when the LR changed
        (a captured step must be captured again)."""
        self.step += steps
        self.done += steps
        changed = set_lr(self.optimizer, self.plan, self.cfg.schedule, self.step)
        if changed:
            self.decay.update()
        return changed

    def check_progress(self) -> None:
        """A progress line (a host sync); a run whose loss is no longer finite stops, diverged."""
        loss = self.loss_sum.item()
        if not math.isfinite(loss):
            self._diverged(loss)
            return
        now = time.monotonic()
        rate = self.done / max(now - self.epoch_start, 1e-9)
        self.log.info("epoch %d/%d  step %d/%d  loss %.4f  %.1f steps/s", self.epoch + 1, self.plan.epochs,
                      self.done, self.epoch_end - self.epoch * self.plan.steps_per_epoch, loss / self.done, rate)
        self._write_progress(rate)

    def _write_progress(self, steps_per_s: float | None) -> None:
        """progress.json: where the run stands, for the launcher's live view and `status`."""
        rundir.write_atomic(self.out_dir / rundir.PROGRESS, rundir.json_bytes({
            "run_id": self.run_id, "epoch": self.epoch + 1, "epochs": self.plan.epochs, "step": self.step,
            "total_steps": self.plan.total_steps, "steps_per_s": steps_per_s, "updated": time.time()}))

    def save_within_epoch(self) -> None:
        self._checkpoint(within_epoch={"loss_sum": self.loss_sum.item(), "wrong": int(self.wrong.item()),
                                       "elapsed": time.monotonic() - self.epoch_start, "lr": self.epoch_lr})

    def end_epoch_if_due(self) -> None:
        if self.status == TRAINING and self.step == self.epoch_end:
            self._end_epoch()

    def _end_epoch(self) -> None:
        train_loss = self.loss_sum.item() / self.done
        train_error = 100.0 * self.wrong.item() / (self.done * self.cfg.batch_size)
        if not math.isfinite(train_loss):
            self._diverged(train_loss)
            return
        self.epoch += 1
        test_loss, test_error, test_top5_error = evaluate(self.model, self.data, self.data.test,
                                                          self.cfg.eval_batch_size, self.device)
        self.elapsed += time.monotonic() - self.epoch_start
        row = {"epoch": self.epoch, "step": self.step, "lr": self.epoch_lr, "train_loss": train_loss,
               "train_error": train_error, "test_loss": rundir.finite_or_none(test_loss), "test_error": test_error,
               "test_top5_error": test_top5_error,
               "sparsity_gamma_pct": gamma_sparsity_pct(self.model, self.cfg.measure.gamma_threshold),
               "time_s": self.elapsed}
        self.metrics.append(row)
        self.bn_history.append(bn_snapshot(self.model))
        self.loggers.log_epoch(row, self.bn_history[-1])
        self.log.info("epoch %d/%d  lr %.3g  train loss %.4f err %.2f%%  test loss %.4f err %.2f%%  "
                      "sparsity by gamma %.1f%%  (%.0f s)", self.epoch, self.plan.epochs, self.epoch_lr, train_loss,
                      train_error, test_loss, test_error, row["sparsity_gamma_pct"], self.elapsed)
        self._checkpoint(within_epoch=None)
        write_history(self.out_dir, self.metrics, self.bn_history)
        if self.step < self.plan.total_steps:
            self._start_epoch(None)
            self._write_progress(None)
        else:
            self.status = TRAINED

    def _diverged(self, loss: float) -> None:
        self.status = DIVERGED
        self.log.error("epoch %d: training loss is %s at step <= %d: stopping, status 'diverged'",
                       self.epoch + 1, loss, self.step)

    def _checkpoint(self, within_epoch: dict | None) -> None:
        """within_epoch: None at an epoch's end; else the running sums of the unfinished epoch, whose first
        step - epoch * steps_per_epoch batches are done."""
        rundir.save_checkpoint(self.out_dir, {
            "run_id": self.run_id, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch, "step": self.step, "elapsed": self.elapsed, "share_s": self.share_s,
            "metrics": self.metrics,
            "bn_history": self.bn_history, "within_epoch": within_epoch, "rng": self.rng, "cuda_rng": self.cuda_rng})

    def fail(self, error: BaseException) -> None:
        """The run cannot go on (an exception in its step or its host work): it leaves its pack; the caller
        reports the error (sparsesweep.jobs)."""
        self.status, self.error = FAILED, error
        self.resources.close()

    # ---- the end ----------------------------------------------------------------------------------------

    def finish(self) -> dict:
        """Measures a trained run, writes results.json (a diverged run's too), closes the run; returns the
        results."""
        cfg, started = self.cfg, time.monotonic()
        status = COMPLETED if self.status == TRAINED else self.status
        results = {"schema": rundir.RESULTS_SCHEMA, "status": status, "run_id": self.run_id,
                   "config": OmegaConf.to_container(cfg, resolve=True), "overrides": self.overrides,
                   "model": cfg.model.name, "dataset": cfg.dataset.name, "optimizer": cfg.optimizer.name,
                   "regularizer": cfg.regularizer.name, "coefficient": coefficient(cfg.regularizer),
                   "batch_size": cfg.batch_size, "seed": cfg.seed, "epochs": self.epoch, "iterations": self.step,
                   "wall_time_s": self.elapsed}
        last = self.metrics[-1] if self.metrics else {}
        for key in ("train_loss", "train_error", "test_loss", "test_error", "test_top5_error"):
            results[key] = rundir.finite_or_none(last.get(key)) if status == COMPLETED else None
        if status == COMPLETED:
            measured, features = final_measurements(self.model, self.data, cfg, self.device)
            rundir.write_atomic(self.out_dir / rundir.FEATURES, rundir.npz_bytes(features))
            results.update(measured)
            results["wall_time_s"] += results["measure_time_s"]
            sparsity = measured["sparsity"]
            self.log.info("sparsity: by activation %.1f%% (< %g), by gamma %.1f%% (< %g)",
                          sparsity["by_activation"]["total_pct"], cfg.measure.activation_threshold,
                          sparsity["by_gamma"]["total_pct"], cfg.measure.gamma_threshold)
            by_gamma = sparsity["by_gamma"]
            unit, shares = ("stage", by_gamma["per_stage_pct"]) if "per_stage_pct" in by_gamma else \
                ("layer", by_gamma["per_layer_pct"])
            self.log.info("per %s by gamma: %s", unit, "  ".join(f"{k} {v:.0f}%" for k, v in shares.items()))
            self.log.info("test error %.2f%%; with the features inactive by gamma zeroed %.2f%%",
                          results["test_error"], results["zeroed_test_error"])
        results["device_time_s"] = self.share_s + time.monotonic() - started
        rundir.write_atomic(self.out_dir / rundir.RESULTS, rundir.json_bytes(results))
        self.status, self.results = status, results
        try:
            self.loggers.close(results)
        except Exception as error:  # noqa: BLE001 (the run is complete and saved; only its mirror is short)
            self.log.error("a logger failed to close (%s: %s): the run itself is complete (results.json)",
                           type(error).__name__, error)
        if status == COMPLETED and cfg.prune.after_training:
            self._prune()
        self.resources.close()
        return results

    def _prune(self) -> None:
        from sparsesweep import prune  # torch-pruning: imported only when a run prunes

        try:
            prune.prune_trained(self.out_dir, self.cfg, self.data, self.model, self.cfg.prune.threshold,
                                batch_size=self.cfg.prune.latency_batch_size, repeats=self.cfg.prune.latency_repeats)
        except Exception as error:  # noqa: BLE001 (the trained run is complete and saved; pruning can be redone)
            self.log.error("pruning failed (%s: %s): the run itself is complete; retry with "
                           "`python -m sparsesweep.prune %s`", type(error).__name__, error, self.out_dir)


def write_history(out_dir: Path, metrics: list[dict], bn_history: list[dict]) -> None:
    rundir.write_atomic(out_dir / rundir.METRICS, rundir.jsonl_bytes(metrics))
    arrays = {key: np.stack([snap[key].numpy() for snap in bn_history]) for key in bn_history[0]}
    arrays["epoch"] = np.arange(len(bn_history))
    rundir.write_atomic(out_dir / rundir.BN_HISTORY, rundir.npz_bytes(arrays))
