"""`hydra/launcher=local` (the default for -m) and `hydra/launcher=slurm`; see launchers.py."""
from dataclasses import dataclass
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf


@dataclass
class LocalPoolConf:
    _target_: str = "hydra_plugins.sparsesweep_launcher.launchers.LocalPoolLauncher"
    submitit_folder: str = "${hydra.sweep.dir}/.submitit/%j"  # submitit's pickles and the jobs' stdout/stderr
    # GPU ids to spread the runs over; null: every GPU PyTorch sees; []: CPU only.
    gpus: Optional[List[int]] = None
    # Runs trained together in one process, stepped in lockstep (on a GPU, one CUDA graph per step): an int,
    # or auto (on GPUs: enough to give every slot a pack, at most 8; on CPU: 1). Only runs that may share a
    # pack (same model, data, batch size, schedule: sparsesweep.pack.pack_key) are packed together.
    pack_size: Any = "auto"
    # Processes per GPU: at most len(gpus) * runs_per_gpu packs run at once.
    runs_per_gpu: int = 1
    # Without GPUs: at most this many jobs at once; null: CPU cores // cpu_threads.
    cpu_parallel: Optional[int] = None
    # Torch/OpenMP threads per job without GPUs (OMP_NUM_THREADS), so jobs do not oversubscribe the cores.
    cpu_threads: int = 1
    # A job is stopped after timeout_min (submitit signals it first, and it is requeued and resumes from
    # its checkpoint) at most this many times.
    max_num_timeout: int = 3
    timeout_min: int = 7 * 24 * 60


@dataclass
class SlurmConf(SlurmQueueConf):
    _target_: str = "hydra_plugins.sparsesweep_launcher.launchers.SlurmArrayLauncher"
    # One pack of runs per array task (pack_size as for the local launcher; auto: 8 with GPUs, else 1), one GPU
    # each; set partition/account/qos for your cluster.
    pack_size: Any = "auto"
    gpus_per_node: Optional[int] = 1
    cpus_per_task: Optional[int] = 8
    mem_gb: Optional[int] = 32
    timeout_min: int = 24 * 60
    # Preempted or timed-out tasks are requeued (submitit) and resume from their checkpoints.
    max_num_timeout: int = 20
    array_parallelism: int = 64
    # false: submit the array and return; follow it with `python -m multirun_analysis status SWEEP_DIR`.
    wait: bool = True
    # Tasks per job array at most; null: the cluster's MaxArraySize (scontrol show config). A larger sweep is
    # submitted as several arrays.
    max_array_size: Optional[int] = None


ConfigStore.instance().store(group="hydra/launcher", name="local", node=LocalPoolConf(), provider="sparsesweep")
ConfigStore.instance().store(group="hydra/launcher", name="slurm", node=SlurmConf(), provider="sparsesweep")
