"""A run's progress: where it stands and what it has measured so far. Together with the model's and the
optimizer's state it is the whole of a checkpoint, so the checkpoint's keys are this dataclass's fields,
listed once."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Progress:
    epoch: int = 0            # epochs finished
    step: int = 0             # optimizer steps taken
    elapsed: float = 0.0      # seconds of the finished epochs, training and evaluation
    share_s: float = 0.0      # its share of its process's time (pack.train_pack charges it)
    graph_steps: int = 0      # steps taken inside a CUDA graph replay (graphs.GraphStep)
    metrics: list = field(default_factory=list)     # a metrics.jsonl row per finished epoch
    bn_history: list = field(default_factory=list)  # BN gamma/beta at initialisation and after every epoch
    # The unfinished epoch's running sums {loss_sum, wrong, elapsed, lr}; None at an epoch's start.
    within_epoch: dict | None = None
    rng: Any = None           # a run with dropout: its own stream of the global RNG (CPU) ...
    cuda_rng: Any = None      # ... and of the CUDA one

    def payload(self, run_id: str, model, optimizer) -> dict:
        """The checkpoint: the run's identity, model and optimizer state, and every field."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {"run_id": run_id, "model": model.state_dict(), "optimizer": optimizer.state_dict(), **fields}

    @classmethod
    def from_checkpoint(cls, state: dict) -> "Progress":
        """The progress a checkpoint holds; a field it lacks (a checkpoint of an older version) takes its default,
        except share_s, which was the epochs' clock."""
        known = {f.name for f in dataclasses.fields(cls)}
        progress = cls(**{key: value for key, value in state.items() if key in known})
        if "share_s" not in state:
            progress.share_s = progress.elapsed
        return progress
