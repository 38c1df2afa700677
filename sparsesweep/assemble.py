"""A run's parts from its config (device, data on that device, the seeded model), and a finished run's parts
from its directory (load_run, which pruning uses)."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from omegaconf import OmegaConf

from sparsesweep import rundir
from sparsesweep.batches import place
from sparsesweep.datasets import Dataset, load_dataset
from sparsesweep.errors import ConfigError
from sparsesweep.models import build_model


def pick_device(name: str) -> torch.device:
    """The device a run trains on, indexed when it is a GPU: tensors placed on `cuda` report `cuda:N` (N the
    current device), and torch.device("cuda") != torch.device("cuda:0"), so a bare `cuda` would never equal
    the device of the run's own data."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if not name.startswith("cuda"):
        return torch.device(name)
    if not torch.cuda.is_available():
        raise ConfigError(f"device={name} but PyTorch sees no CUDA GPU: use device=cpu or device=auto")
    index = torch.device(name).index
    index = torch.cuda.current_device() if index is None else index
    if index >= torch.cuda.device_count():
        raise ConfigError(f"device={name} but PyTorch sees {torch.cuda.device_count()} GPU(s), cuda:0 to "
                          f"cuda:{torch.cuda.device_count() - 1}: use one of them, or device=cuda")
    return torch.device("cuda", index)


def memory_format(cfg, device: torch.device, model: torch.nn.Module) -> torch.memory_format:
    """performance.channels_last: true, false, or auto: NHWC for a convnet on a GPU (its convolutions run
    faster so; on the CPU they do not)."""
    setting = cfg.performance.channels_last
    if setting == "auto":
        setting = device.type == "cuda" and any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    return torch.channels_last if setting else torch.contiguous_format


def data_for(cfg, device: torch.device) -> Dataset:
    """The run's dataset, placed per cfg.performance."""
    return place(load_dataset(cfg.dataset), device, cfg.performance.data_on_device)


def model_for(cfg, data: Dataset, device: torch.device) -> torch.nn.Module:
    """The run's model, initialised from cfg.seed (the global RNG is seeded here)."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, data.channels, data.num_classes, resolution=data.resolution)
    return model.to(device, memory_format=memory_format(cfg, device, model))


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
    data = data_for(cfg, device)
    model = model_for(cfg, data, device)
    model.load_state_dict(state["model"])
    return cfg, data, model.eval()
