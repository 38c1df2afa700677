"""One run: config -> data, model, optimizer -> train (checkpoint every epoch, resumable) -> measure -> files.

The loop is deterministic for a seed on CPU: the model is initialised from `seed`, and epoch e shuffles
and augments from its own generator seeded by (seed, e), so a run resumed from the checkpoint of epoch e
continues exactly as the uninterrupted run would.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from sparsesweep import interrupts, loggers, rundir, validate
from sparsesweep.data import batches, load_dataset, place
from sparsesweep.errors import ConfigError
from sparsesweep.measure import inactive_by_gamma, measure, zeroed_copy
from sparsesweep.models import build_model
from sparsesweep.optim import (apply_decoupled_weight_decay, build_lr_scheduler, build_optimizer, coefficient,
                               plan_schedule)

log = logging.getLogger("sparsesweep")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but PyTorch sees no CUDA GPU: use device=cpu or device=auto")
    return torch.device(name)


@torch.no_grad()
def evaluate(model, data, split, cfg, device) -> tuple[float, float, float]:
    """(mean cross-entropy, top-1 error %, top-5 error %) in eval mode. With fewer than 5 classes the
    top-5 error is 0."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=device)
    wrong = torch.zeros(2, device=device, dtype=torch.long)
    for x, y in batches(data, split, cfg.eval_batch_size, device):
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        wrong[0] += (top5[:, 0] != y).sum()
        wrong[1] += (top5 != y[:, None]).all(1).sum()
    model.train(was_training)
    top1, top5 = (100.0 * wrong / len(split)).tolist()
    return loss_sum.item() / len(split), top1, top5


def gamma_sparsity_pct(model, threshold: float) -> float:
    inactive = inactive_by_gamma(model, threshold)
    return 100.0 * sum(int(m.sum()) for m in inactive.values()) / sum(m.numel() for m in inactive.values())


def bn_snapshot(model) -> dict[str, torch.Tensor]:
    return {f"{b.name}_{kind}": getattr(b.bn, attr).detach().cpu().clone()
            for b in model.features for kind, attr in (("gamma", "weight"), ("beta", "bias"))}


def build(cfg, device: torch.device):
    """The run's data (placed per cfg.performance) and its model, initialised from cfg.seed."""
    data = place(load_dataset(cfg.dataset), device, cfg.performance.data_on_device)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, data.channels, data.num_classes, resolution=data.resolution)
    return data, model.to(device, memory_format=memory_format(cfg))


def memory_format(cfg) -> torch.memory_format:
    return torch.channels_last if cfg.performance.channels_last else torch.contiguous_format


def load_run(run_dir: Path, device: str | None = None, data_root: str | None = None):
    """A finished run's (config, data, model with its final weights in eval mode), from its results.json
    and checkpoint.pt (which must be that run's). device: None uses the run's own setting; data_root replaces
    dataset.root (the run's may be relative to where it was launched)."""
    run_dir = Path(run_dir)
    results = json.loads((run_dir / rundir.RESULTS).read_text())
    cfg = OmegaConf.create(results["config"])
    if data_root is not None:
        cfg.dataset.root = data_root
    device = pick_device(device or cfg.device)
    path = run_dir / rundir.CHECKPOINT
    if not path.exists():
        raise ConfigError(f"{path} is missing: the final weights are gone; train the run again")
    try:
        state = rundir.read_checkpoint(path, results["run_id"], device)  # the final weights: no fallback
    except rundir.CorruptCheckpoint as error:
        raise ConfigError(f"{path.name} is unreadable ({error}): the final weights are lost; train the run "
                          f"again") from None
    data, model = build(cfg, device)
    model.load_state_dict(state["model"])
    return cfg, data, model.eval()


def run(cfg, out_dir: Path, overrides=(), on_open=None) -> dict:
    """Train, measure and write the run directory; returns the results.json content. The directory belongs
    to this run: one holding another run's state is refused (RunDirConflict), one being trained by another
    process too (RunDirBusy), and one this run already finished is returned as it is. on_open(): called
    once the directory is known to be this run's (the entry point writes Hydra's .hydra/ then)."""
    validate.check_config(cfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    run_id = rundir.run_identity(cfg)
    with rundir.locked(out_dir), interrupts.StopSignals() as stops:
        foreign = rundir.foreign_run(out_dir, run_id)
        if foreign:
            raise RunDirConflict(out_dir, foreign, cfg, run_id)
        finished = rundir.read_json(out_dir / rundir.RESULTS)
        if finished.get("status") in rundir.FINISHED and finished.get("run_id") == run_id:
            log.info("run %s is already %s in %s: nothing to do", run_id, finished["status"], out_dir)
            return finished
        rundir.write_identity(out_dir, run_id, cfg, overrides)
        if on_open:
            on_open()
        return train(cfg, out_dir, run_id, overrides, stops)


class RunDirConflict(ConfigError):
    def __init__(self, out_dir: Path, foreign: dict, cfg, run_id: str):
        differences = rundir.config_differences(foreign.get("config") or {}, rundir.run_config(cfg))
        super().__init__(f"{out_dir} holds run {foreign['run_id']} of another config ({'; '.join(differences[:3])}"
                         f"{' ...' if len(differences) > 3 else ''}), not this one ({run_id}): nothing was "
                         f"changed; train it in a new directory (hydra.run.dir=... or hydra.sweep.dir=...)")


def train(cfg, out_dir: Path, run_id: str, overrides, stops: interrupts.StopSignals) -> dict:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)

    perf = cfg.performance
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels once
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = bool(perf.tf32)
    data, model = build(cfg, device)
    # The compiled module shares the parameters; checkpoints, hooks and evaluation use the plain one.
    forward = torch.compile(model) if perf.compile else model
    optimizer = build_optimizer(cfg.optimizer, cfg.regularizer, model)
    plan = plan_schedule(cfg.schedule, len(data.train), cfg.batch_size)
    scheduler = build_lr_scheduler(optimizer, plan, cfg.schedule)

    epoch, step, elapsed, metrics, bn_history = 0, 0, 0.0, [], [bn_snapshot(model)]
    within_epoch = None  # from a checkpoint taken within an epoch: that epoch's running sums so far
    resumed = rundir.load_checkpoint(out_dir, run_id, device)
    if resumed:
        checkpoint_path, state = resumed
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        epoch, step, elapsed = state["epoch"], state["step"], state["elapsed"]
        metrics, bn_history, within_epoch = state["metrics"], state["bn_history"], state["within_epoch"]
        torch.set_rng_state(state["rng"].cpu())  # dropout (VGG's ImageNet head) continues its stream
        if device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"].cpu(), device)
        log.info("resuming from %s: epoch %d, step %d", checkpoint_path, epoch, step)

    log.info("run %s: %s on %s (%d train / %d test, %d classes), %s + %s %.3g, batch %d, %d steps in %d epochs,"
             " %d parameters, %s", run_id, cfg.model.name, data.name, len(data.train), len(data.test),
             data.num_classes, cfg.optimizer.name, cfg.regularizer.name, coefficient(cfg.regularizer),
             cfg.batch_size, plan.total_steps, plan.epochs, sum(p.numel() for p in model.parameters()), device)
    if "CUDA_VISIBLE_DEVICES" in os.environ:  # set per job by the local launcher
        log.info("CUDA_VISIBLE_DEVICES=%s", os.environ["CUDA_VISIBLE_DEVICES"])

    def checkpoint(**progress):
        save_checkpoint(out_dir, run_id, device, model, optimizer, scheduler, step=step, elapsed=elapsed,
                        metrics=metrics, bn_history=bn_history, **progress)

    run_loggers = loggers.RunLoggers(cfg, out_dir, first_epoch=epoch + 1)
    status = "completed"
    model.train()
    stops.deferring = True  # from here a stop signal waits for the next step's end and saves that step
    while step < plan.total_steps:
        # batches_done > 0 only when resuming from a checkpoint taken within this epoch: skip what it had done.
        batches_done = step - epoch * plan.steps_per_epoch
        sums = within_epoch or {"loss_sum": 0.0, "wrong": 0, "elapsed": 0.0,
                                "lr": optimizer.param_groups[0]["lr"]}
        within_epoch = None
        loss_sum = torch.tensor(sums["loss_sum"], device=device)
        wrong = torch.tensor(sums["wrong"], device=device, dtype=torch.long)
        lr = sums["lr"]
        last_progress = last_checkpoint = time.monotonic()
        epoch_start = last_progress - sums["elapsed"]
        for x, y in batches(data, data.train, cfg.batch_size, device, shuffle_seed=cfg.seed * 1_000_003 + epoch,
                            augment=data.augment, memory_format=memory_format(cfg), skip=batches_done):
            logits = forward(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            apply_decoupled_weight_decay(optimizer)
            scheduler.step()
            step += 1
            # Running sums stay on the device: no host sync per step. A NaN/inf loss poisons the sum.
            # Every training batch is full (no partial last batch), so the mean of batch means is per image.
            loss_sum += loss.detach()
            wrong += (logits.detach().argmax(1) != y).sum()
            batches_done += 1
            if time.monotonic() - last_progress > cfg.progress_interval_s:
                last_progress = time.monotonic()
                if not math.isfinite(loss_sum.item()):
                    break
                log.info("epoch %d/%d  step %d/%d  loss %.4f  %.1f steps/s", epoch + 1, plan.epochs, batches_done,
                         min(plan.steps_per_epoch, plan.total_steps - epoch * plan.steps_per_epoch),
                         loss_sum.item() / batches_done, batches_done / (last_progress - epoch_start))
            if step == plan.total_steps:
                break
            if stops.pending or time.monotonic() - last_checkpoint > 60 * cfg.checkpoint_interval_min:
                last_checkpoint = time.monotonic()
                checkpoint(epoch=epoch, within_epoch={"loss_sum": loss_sum.item(), "wrong": int(wrong.item()),
                                                      "elapsed": last_checkpoint - epoch_start, "lr": lr})
                if stops.pending:
                    log.warning("%s at epoch %d, step %d: checkpoint saved", interrupts.signal_name(stops.pending),
                                epoch + 1, step)
                    stops.act()
        train_loss = loss_sum.item() / batches_done
        train_error = 100.0 * wrong.item() / (batches_done * cfg.batch_size)
        if not math.isfinite(train_loss):
            status = "diverged"
            log.error("epoch %d: training loss is %s at step <= %d: stopping, status 'diverged'",
                      epoch + 1, train_loss, step)
            break
        epoch += 1
        test_loss, test_error, test_top5_error = evaluate(model, data, data.test, cfg, device)
        elapsed += time.monotonic() - epoch_start
        row = {"epoch": epoch, "step": step, "lr": lr, "train_loss": train_loss, "train_error": train_error,
               "test_loss": rundir.finite_or_none(test_loss), "test_error": test_error,
               "test_top5_error": test_top5_error,
               "sparsity_gamma_pct": gamma_sparsity_pct(model, cfg.measure.gamma_threshold),
               "time_s": elapsed}
        metrics.append(row)
        bn_history.append(bn_snapshot(model))
        run_loggers.log_epoch(row, bn_history[-1])
        log.info("epoch %d/%d  lr %.3g  train loss %.4f err %.2f%%  test loss %.4f err %.2f%%  "
                 "sparsity by gamma %.1f%%  (%.0f s)", epoch, plan.epochs, lr, train_loss, train_error,
                 test_loss, test_error, row["sparsity_gamma_pct"], elapsed)
        checkpoint(epoch=epoch, within_epoch=None)
        write_history(out_dir, metrics, bn_history)
        if stops.pending:
            log.warning("%s at the end of epoch %d: checkpoint saved", interrupts.signal_name(stops.pending), epoch)
            stops.act()
    stops.deferring = False  # the last checkpoint holds all the training: a stop from here loses nothing

    results = {"schema": rundir.RESULTS_SCHEMA, "status": status, "run_id": run_id,
               "config": OmegaConf.to_container(cfg, resolve=True), "overrides": list(overrides),
               "model": cfg.model.name, "dataset": cfg.dataset.name, "optimizer": cfg.optimizer.name,
               "regularizer": cfg.regularizer.name, "coefficient": coefficient(cfg.regularizer),
               "batch_size": cfg.batch_size, "seed": cfg.seed, "epochs": epoch, "iterations": step,
               "wall_time_s": elapsed}
    last = metrics[-1] if metrics else {}
    for key in ("train_loss", "train_error", "test_loss", "test_error", "test_top5_error"):
        results[key] = rundir.finite_or_none(last.get(key)) if status == "completed" else None
    if status == "completed":
        with full_fp32():
            results.update(final_measurements(model, data, cfg, device, out_dir))
        results["wall_time_s"] += results["measure_time_s"]
        log.info("test error %.2f%%; with the features inactive by gamma zeroed %.2f%%", results["test_error"],
                 results["zeroed_test_error"])
    rundir.write_atomic(out_dir / rundir.RESULTS, rundir.json_bytes(results))
    run_loggers.close(results)
    if status == "completed" and cfg.prune.after_training:
        from sparsesweep import prune  # prune imports this module

        try:
            prune.prune_trained(out_dir, cfg, data, model, cfg.prune.threshold,
                                batch_size=cfg.prune.latency_batch_size, repeats=cfg.prune.latency_repeats)
        except Exception as error:  # noqa: BLE001 (the trained run is complete and saved; pruning can be redone)
            log.error("pruning failed (%s: %s): the run itself is complete; retry with "
                      "`python -m sparsesweep.prune %s`", type(error).__name__, error, out_dir)
    return results


@contextlib.contextmanager
def full_fp32():
    """The sparsity criteria (activations < 1e-12, |gamma| < 1e-3) are measured in full fp32: no TF32."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def final_measurements(model, data, cfg, device, out_dir: Path) -> dict:
    """The end-of-run pass over the whole training set (sparsity, selectivity; features.npz) and the
    zeroing check: the test error with the features inactive by gamma set to exactly 0."""
    start = time.monotonic()
    measured, per_feature = measure(model, batches(data, data.train, cfg.eval_batch_size, device), cfg.measure)
    zeroed = zeroed_copy(model, inactive_by_gamma(model, cfg.measure.gamma_threshold))
    _, measured["zeroed_test_error"], measured["zeroed_test_top5_error"] = evaluate(zeroed, data, data.test, cfg,
                                                                                    device)
    measured["measure_time_s"] = time.monotonic() - start
    rundir.write_atomic(out_dir / rundir.FEATURES, rundir.npz_bytes(
        {f"{layer}_{key}": value.numpy() for layer, arrays in per_feature.items() for key, value in arrays.items()}))
    sparsity = measured["sparsity"]
    log.info("sparsity: by activation %.1f%% (< %g), by gamma %.1f%% (< %g)", sparsity["by_activation"]["total_pct"],
             cfg.measure.activation_threshold, sparsity["by_gamma"]["total_pct"], cfg.measure.gamma_threshold)
    by_gamma = sparsity["by_gamma"]
    unit, shares = ("stage", by_gamma["per_stage_pct"]) if "per_stage_pct" in by_gamma else \
        ("layer", by_gamma["per_layer_pct"])
    log.info("per %s by gamma: %s", unit, "  ".join(f"{k} {v:.0f}%" for k, v in shares.items()))
    return measured


def save_checkpoint(out_dir: Path, run_id, device, model, optimizer, scheduler, **progress):
    """progress: epoch (finished epochs), step, elapsed, metrics, bn_history, within_epoch (None at an epoch's
    end; else the running sums of the unfinished epoch, whose first step - epoch * steps_per_epoch batches
    are done)."""
    rundir.save_checkpoint(out_dir, {
        "run_id": run_id, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(), **progress, "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None})


def write_history(out_dir: Path, metrics: list[dict], bn_history: list[dict]) -> None:
    rundir.write_atomic(out_dir / rundir.METRICS, rundir.jsonl_bytes(metrics))
    arrays = {key: np.stack([snap[key].numpy() for snap in bn_history]) for key in bn_history[0]}
    arrays["epoch"] = np.arange(len(bn_history))
    rundir.write_atomic(out_dir / rundir.BN_HISTORY, rundir.npz_bytes(arrays))
