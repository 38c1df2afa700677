"""A run's progress: where it stands and what it has measured so far (Progress: with the model's and the
optimizer's state it is the whole of a checkpoint, so the checkpoint's keys are its fields, listed once), and
the unfinished epoch's sums on the device (EpochTally)."""
from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Progress:
    epoch: int = 0            # epochs finished
    step: int = 0             # optimizer steps taken
    elapsed: float = 0.0      # seconds of the finished epochs, training and evaluation
    share_s: float = 0.0      # its share of its process's time (pack.train_pack charges it)
    graph_steps: int = 0      # steps taken inside a CUDA graph replay (graphs.GraphStep)
    metrics: list = field(default_factory=list)     # a metrics.jsonl row per finished epoch
    bn_history: list = field(default_factory=list)  # BN gamma/beta (and starved steps) at init and every epoch end
    counters: dict | None = None  # the starvation counters (starvation.FeatureCounters.state_dict) at the save
    # The unfinished epoch's running sums {loss_sum, wrong, elapsed, lr}; None at an epoch's start.
    within_epoch: dict | None = None
    rng: Any = None           # a run with dropout: its own stream of the global RNG (CPU) ...
    cuda_rng: Any = None      # ... and of the CUDA one

    def payload(self, run_id: str, model, optimizer) -> dict:
        """The checkpoint: the run's identity, model and optimizer state, and every field."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {"run_id": run_id, "model": model.state_dict(), "optimizer": optimizer.state_dict(), **fields}

    @contextlib.contextmanager
    def own_rng(self, device: torch.device):
        """Within it, the global RNG (and the device's, on a GPU) is this run's stream, which goes on from where
        it stopped: dropout draws from it, and a run in a pack draws what it would alone."""
        on_cuda = self.cuda_rng is not None
        saved, saved_cuda = torch.get_rng_state(), torch.cuda.get_rng_state(device) if on_cuda else None
        torch.set_rng_state(self.rng)
        if on_cuda:
            torch.cuda.set_rng_state(self.cuda_rng, device)
        try:
            yield
        finally:
            self.rng = torch.get_rng_state()
            torch.set_rng_state(saved)
            if on_cuda:
                self.cuda_rng = torch.cuda.get_rng_state(device)
                torch.cuda.set_rng_state(saved_cuda, device)

    @classmethod
    def from_checkpoint(cls, state: dict) -> "Progress":
        """The progress a checkpoint holds; a field it lacks (a checkpoint of an older version) takes its default,
        except share_s, which was the epochs' clock."""
        known = {f.name for f in dataclasses.fields(cls)}
        progress = cls(**{key: value for key, value in state.items() if key in known})
        # RNG states are CPU byte tensors, whatever device the checkpoint was loaded onto.
        progress.rng = progress.rng.cpu() if progress.rng is not None else None
        progress.cuda_rng = progress.cuda_rng.cpu() if progress.cuda_rng is not None else None
        if "share_s" not in state:
            progress.share_s = progress.elapsed
        return progress


class EpochTally:
    """The unfinished epoch: its loss and error sums on the device (the step adds to them without a host sync),
    the LR it started with (metrics.jsonl records it) and when it started."""

    def __init__(self, device: torch.device):
        self.loss_sum = torch.zeros((), device=device)
        self.wrong = torch.zeros((), device=device, dtype=torch.long)
        self.lr, self.started = 0.0, 0.0

    def restart(self, sums: dict) -> None:
        self.loss_sum.fill_(sums["loss_sum"])
        self.wrong.fill_(sums["wrong"])
        self.lr, self.started = sums["lr"], time.monotonic() - sums["elapsed"]

    def sums(self) -> dict:
        """The sums on the host (a sync), as a checkpoint holds them."""
        return {"loss_sum": self.loss_sum.item(), "wrong": int(self.wrong.item()),
                "elapsed": time.monotonic() - self.started, "lr": self.lr}
