"""One run's state and life: open (or resume) its directory, train steps, end an epoch, finish.

Which runs step when is pack.py's: a run does not know whether it trains alone or with others. Its step
reads and writes only its own tensors (model, optimizer, training feed, running sums, WD factor), all on
its device, with no host sync, so that K runs stepped together in one process give exactly what each gives
alone, and a CUDA graph can replay the step (graphs.py sees them through step_state()).

Determinism (CPU): the model is initialised from `seed`; epoch e shuffles and augments from its own generator
seeded by (seed, e), drawn whole when the epoch starts, so a run resumed from a checkpoint taken anywhere
in epoch e redraws that epoch and continues exactly as the uninterrupted run would.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import shlex
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from rundir_format import COMPLETED, DIVERGED, FAILED, duration
from sparsesweep import assemble, graphs, loggers, provenance, rundir
from sparsesweep.batches import shuffle_seed, training_feed
from sparsesweep.datasets import Dataset
from sparsesweep.measure import bn_snapshot, describe, evaluate, final_measurements, gamma_sparsity_pct
from sparsesweep.models import draws_randomness
from sparsesweep.optim import DecoupledDecay, build_optimizer, coefficient, plan_schedule, set_lr, stop_capturable
from sparsesweep.progress import EpochTally, Progress

TRAINING, TRAINED = "training", "trained"  # then COMPLETED, DIVERGED or FAILED (rundir_format)
CPU_WARNING_S = 3600  # a run the CPU needs longer for is said as a warning, with what to do instead


class Run:
    """A run whose directory is open (rundir.open_directory), from its first step or its latest checkpoint."""

    def __init__(self, cfg, run_id: str, out_dir: Path, overrides, data: Dataset, device: torch.device,
                 log: logging.Logger, resources: contextlib.ExitStack):
        self.cfg, self.run_id, self.out_dir, self.overrides = cfg, run_id, Path(out_dir), list(overrides)
        self.data, self.log, self.resources = data, log, resources
        self.model = assemble.model_for(cfg, data, device)
        # The compiled module shares the parameters; checkpoints, hooks and evaluation use the plain one.
        self.forward = torch.compile(self.model) if cfg.performance.compile else self.model
        self.plan = plan_schedule(cfg.schedule, len(data.train), cfg.batch_size)
        self.feed = training_feed(data, cfg.batch_size, device, assemble.memory_format(cfg, device, self.model))
        # What a capture needs of the step costs an eager one (step counts on the device, gradients zeroed at
        # fixed addresses): only a run that may be captured pays for it (graphs.why_not_capturable).
        self.capturable = graphs.why_not_capturable(self) is None
        # torch's `capturable` puts the step counts on a GPU: it has no meaning (and is refused) on the CPU.
        self.optimizer = build_optimizer(cfg.optimizer, cfg.regularizer, self.model,
                                         capturable=self.capturable and device.type == "cuda")
        self.tally = EpochTally(device)
        self.progress = self._resume() or self._fresh()
        # A run stopped after its last step, before its results were written, only has to finish.
        self.status = TRAINING if self.progress.step < self.plan.total_steps else TRAINED
        self.error, self.results = None, None
        set_lr(self.optimizer, self.plan, cfg.schedule, self.progress.step)
        self.decay = DecoupledDecay(self.optimizer, device)
        self.loggers = loggers.RunLoggers(cfg, self.out_dir, first_epoch=self.progress.epoch + 1)
        self.log.info("run %s: %s on %s (%d train / %d test, %d classes), %s + %s %.3g, batch %d, %d steps in %d "
                      "epochs, %d parameters, %s", self.run_id, cfg.model.name, data.name, len(data.train),
                      len(data.test), data.num_classes, cfg.optimizer.name, cfg.regularizer.name,
                      coefficient(cfg.regularizer), cfg.batch_size, self.plan.total_steps, self.plan.epochs,
                      sum(p.numel() for p in self.model.parameters()), device)
        if "CUDA_VISIBLE_DEVICES" in os.environ:  # set per job by the local launcher
            self.log.info("CUDA_VISIBLE_DEVICES=%s", os.environ["CUDA_VISIBLE_DEVICES"])
        self.model.train()
        self.clock = (time.monotonic(), self.progress.step)  # this process's start: its speed, so the time left
        self.estimated = False
        if self.status == TRAINING:
            self._start_epoch(self.progress.within_epoch)

    def _fresh(self) -> Progress:
        # Dropout and stochastic depth draw from the global RNG: each run keeps its own stream of it, which
        # continues from its model's initialisation as it would alone.
        stochastic = draws_randomness(self.model)
        on_cuda = stochastic and self.device.type == "cuda"
        return Progress(bn_history=[bn_snapshot(self.model)], rng=torch.get_rng_state() if stochastic else None,
                        cuda_rng=torch.cuda.get_rng_state(self.device) if on_cuda else None)

    def _resume(self) -> Progress | None:
        """The latest readable checkpoint's progress (model and optimizer loaded), None without one."""
        resumed = rundir.load_checkpoint(self.out_dir, self.run_id, self.device)
        if not resumed:
            return None
        path, state = resumed
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        progress = Progress.from_checkpoint(state)
        self.log.info("resuming from %s: epoch %d, step %d", path, progress.epoch, progress.step)
        return progress

    @property
    def device(self) -> torch.device:
        return self.feed.device

    @property
    def stochastic(self) -> bool:
        return self.progress.rng is not None

    def own_rng(self):
        """A context within which the global RNG is this run's stream (dropout); nothing to swap otherwise."""
        return self.progress.own_rng(self.device) if self.stochastic else contextlib.nullcontext()

    @property
    def steps_done_in_epoch(self) -> int:
        return self.progress.step - self.progress.epoch * self.plan.steps_per_epoch

    @property
    def epoch_end(self) -> int:
        """The step that ends the epoch in progress."""
        return min((self.progress.epoch + 1) * self.plan.steps_per_epoch, self.plan.total_steps)

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
        self.tally.loss_sum += loss.detach()
        self.tally.wrong += (logits.detach().argmax(1) != y).sum()

    def step_state(self) -> dict[str, torch.Tensor]:
        """Every tensor train_step changes (in place, at a fixed address): the model's parameters and buffers,
        the optimizer's state, the feed's position, the epoch's sums."""
        tensors = {f"model.{k}": v.data if isinstance(v, torch.nn.Parameter) else v
                   for k, v in self.model.state_dict(keep_vars=True).items()}
        params = (p for group in self.optimizer.param_groups for p in group["params"])
        tensors.update({f"optimizer.{i}.{key}": value for i, p in enumerate(params)
                        for key, value in self.optimizer.state[p].items() if torch.is_tensor(value)})
        return {**tensors, "feed.position": self.feed.position, "loss_sum": self.tally.loss_sum,
                "wrong": self.tally.wrong}

    # ---- host work between steps ------------------------------------------------------------------------

    def _start_epoch(self, within_epoch: dict | None) -> None:
        """Draws the epoch (from a checkpoint taken within it: skips the batches done, with their sums)."""
        self.feed.draw(shuffle_seed(self.cfg.seed, self.progress.epoch), self.steps_done_in_epoch)
        self.tally.restart(within_epoch or {"loss_sum": 0.0, "wrong": 0, "elapsed": 0.0,
                                            "lr": self.optimizer.param_groups[0]["lr"]})
        self._write_progress(None)

    def steps_to_boundary(self) -> int:
        """Steps until the host has work for this run: its epoch's end or an LR change."""
        step, decay = self.progress.step, self.plan.decay_step
        return (self.epoch_end if step >= decay else min(self.epoch_end, decay)) - step

    def count_steps(self, steps: int) -> bool:
        """Bookkeeping after `steps` train_steps (at most steps_to_boundary()); True when the LR changed
        (a captured step must be captured again)."""
        self.progress.step += steps
        lr_changed = set_lr(self.optimizer, self.plan, self.cfg.schedule, self.progress.step)
        if lr_changed:
            self.decay.update()
        return lr_changed

    def check_progress(self) -> None:
        """A progress line (a host sync); a run whose loss is no longer finite stops, diverged."""
        loss, done = self.tally.loss_sum.item(), self.steps_done_in_epoch
        if not math.isfinite(loss):
            self._diverged(loss)
            return
        rate = done / max(time.monotonic() - self.tally.started, 1e-9)
        left_s = self.time_left_s()
        self.log.info("epoch %d/%d  step %d/%d  loss %.4f  %.1f steps/s  %s left", self.progress.epoch + 1,
                      self.plan.epochs, done, self.epoch_end - self.progress.epoch * self.plan.steps_per_epoch,
                      loss / done, rate, duration(left_s))
        self._write_progress(rate)
        if not self.estimated and left_s is not None:
            self.estimated = True
            self._say_the_cost(left_s)

    def time_left_s(self) -> float | None:
        """Until the last step, at the speed this process has trained at (its evaluations included)."""
        started, first_step = self.clock
        done = self.progress.step - first_step
        return (self.plan.total_steps - self.progress.step) * (time.monotonic() - started) / done if done else None

    def _say_the_cost(self, left_s: float) -> None:
        """Once, from the first progress interval: the time the run will take here; on a CPU, more than an
        hour is said as a warning that names the quick form of the command and the GPU (the run goes on)."""
        steps = self.plan.total_steps - self.progress.step
        self.log.info("%s steps left: about %s on %s (until %s)", f"{steps:,}", duration(left_s), self.device,
                      time.strftime("%a %H:%M", time.localtime(time.time() + left_s)))
        if self.device.type == "cpu" and left_s > CPU_WARNING_S:
            quick = [o for o in self.overrides if not o.lstrip("+").startswith("experiment=")] + ["+experiment=smoke"]
            self.log.warning("this run needs about %s on the CPU, and goes on: to try the command in a minute, "
                             "python -m sparsesweep %s; to train it, a GPU (device=cuda, or a cluster: "
                             "hydra/launcher=slurm)", duration(left_s), shlex.join(quick))

    def _write_progress(self, steps_per_s: float | None) -> None:
        rundir.write_progress(self.out_dir, {
            "run_id": self.run_id, "epoch": self.progress.epoch + 1, "epochs": self.plan.epochs,
            "step": self.progress.step, "total_steps": self.plan.total_steps, "steps_per_s": steps_per_s})

    def save(self) -> None:
        """A checkpoint at the current step (within an epoch, with its sums; a host sync)."""
        self.progress.within_epoch = self.tally.sums() if self.steps_done_in_epoch > 0 else None
        rundir.save_checkpoint(self.out_dir, self.progress.payload(self.run_id, self.model, self.optimizer))

    def end_epoch_if_due(self) -> None:
        if self.status == TRAINING and self.progress.step == self.epoch_end:
            self._end_epoch()

    def _end_epoch(self) -> None:
        progress, done = self.progress, self.steps_done_in_epoch
        train_loss = self.tally.loss_sum.item() / done
        train_error = 100.0 * self.tally.wrong.item() / (done * self.cfg.batch_size)
        if not math.isfinite(train_loss):
            self._diverged(train_loss)
            return
        test_loss, test_error, test_top5_error = evaluate(self.model, self.data, self.data.test,
                                                          self.cfg.eval_batch_size, self.device)
        progress.epoch += 1
        progress.elapsed += time.monotonic() - self.tally.started
        row = {"epoch": progress.epoch, "step": progress.step, "lr": self.tally.lr, "train_loss": train_loss,
               "train_error": train_error, "test_loss": rundir.finite_or_none(test_loss), "test_error": test_error,
               "test_top5_error": test_top5_error,
               "sparsity_gamma_pct": gamma_sparsity_pct(self.model, self.cfg.measure.gamma_threshold),
               "time_s": progress.elapsed}
        progress.metrics.append(row)
        progress.bn_history.append(bn_snapshot(self.model))
        self.loggers.log_epoch(row, progress.bn_history[-1])
        self.log.info("epoch %d/%d  lr %.3g  train loss %.4f err %.2f%%  test loss %.4f err %.2f%%  "
                      "sparsity by gamma %.1f%%  (%.0f s)", progress.epoch, self.plan.epochs, self.tally.lr,
                      train_loss, train_error, test_loss, test_error, row["sparsity_gamma_pct"], progress.elapsed)
        rundir.write_history(self.out_dir, progress.metrics, progress.bn_history)
        if progress.step < self.plan.total_steps:
            self._start_epoch(None)
        else:
            self.status = TRAINED

    def _diverged(self, loss: float) -> None:
        self.status = DIVERGED
        self.log.error("epoch %d: training loss is %s at step <= %d: stopping, status 'diverged'",
                       self.progress.epoch + 1, loss, self.progress.step)

    def train_eagerly(self) -> None:
        """The run will not be captured (its pack's probe refused it): it stops paying for what a capture needs."""
        self.capturable = False
        stop_capturable(self.optimizer)

    def fail(self, error: BaseException) -> None:
        """The run cannot go on (its step or host work raised): it leaves its pack; sparsesweep.jobs reports it."""
        self.status, self.error = FAILED, error
        self.resources.close()

    def finish(self) -> dict:
        """Saves a trained run's final checkpoint, measures it, writes results.json (a diverged run's too),
        closes the run; returns the results."""
        cfg, progress, started = self.cfg, self.progress, time.monotonic()
        status = COMPLETED if self.status == TRAINED else self.status
        results = {"schema": rundir.RESULTS_SCHEMA, "status": status, "run_id": self.run_id,
                   "config": OmegaConf.to_container(cfg, resolve=True), "overrides": self.overrides,
                   "model": cfg.model.name, "dataset": cfg.dataset.name, "optimizer": cfg.optimizer.name,
                   "regularizer": cfg.regularizer.name, "coefficient": coefficient(cfg.regularizer),
                   "batch_size": cfg.batch_size, "seed": cfg.seed, "epochs": progress.epoch,
                   "iterations": progress.step, "graph_steps": progress.graph_steps, "wall_time_s": progress.elapsed}
        last = progress.metrics[-1] if progress.metrics else {}
        for key in ("train_loss", "train_error", "test_loss", "test_error", "test_top5_error"):
            results[key] = rundir.finite_or_none(last.get(key)) if status == COMPLETED else None
        if status == COMPLETED:
            self.save()  # the final weights: pruning and `inspect` read them
            measured, features = final_measurements(self.model, self.data, cfg, self.device)
            rundir.write_atomic(self.out_dir / rundir.FEATURES, rundir.npz_bytes(features))
            results.update(measured)
            results["wall_time_s"] += results["measure_time_s"]
            for line in describe(results, cfg.measure):
                self.log.info("%s", line)
        results["device_time_s"] = progress.share_s + time.monotonic() - started
        results["provenance"] = provenance.describe(self.device)  # the process that finished the run
        rundir.write_atomic(self.out_dir / rundir.RESULTS, rundir.json_bytes(results))
        self.status, self.results = status, results
        try:
            self.loggers.close(results)
        except Exception as error:  # noqa: BLE001 (the run is complete and saved; only its mirror is short)
            self.log.error("a logger failed to close (%s: %s): the run itself is complete (results.json)",
                           type(error).__name__, error)
        if status == COMPLETED and cfg.prune.after_training:
            from sparsesweep.prune import prune_after_training  # torch-pruning: imported only when a run prunes

            prune_after_training(self.out_dir, cfg, self.data, self.model, self.log)
        self.resources.close()
        return results
