"""Hydra jobs -> runs: `python -m sparsesweep` trains its job as a pack of one; the launchers hand a pack of
jobs to one process (train_jobs). What a job that did not train reports: None when it trained (or had
already finished), else one line saying why, which the launcher prints (`running elsewhere: ...`,
`failed: ...`); in a sweep a failure is recorded in the run's directory and never stops the other runs."""
from __future__ import annotations

import logging
import pickle
import signal
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rundir_format import LOG
from sparsesweep import apart, interrupts, pack, rundir
from sparsesweep.errors import LOG_FORMAT, ConfigError
from sparsesweep.interrupts import Interrupted

log = logging.getLogger("sparsesweep")


@dataclass
class Job:
    cfg: object        # the job's config, without Hydra's node
    hydra_cfg: object  # its `hydra` node (HydraConfig)
    number: int = 0

    @property
    def out_dir(self) -> Path:
        return Path(self.hydra_cfg.runtime.output_dir)

    @property
    def overrides(self) -> list[str]:
        return list(self.hydra_cfg.overrides.task)


def train_jobs(jobs: list[Job], in_sweep: bool, own_logs: bool = False,
               apart_unless_captured: bool = False) -> list[str | None]:
    """Trains the jobs as one pack; per job None or the line saying why it did not train. own_logs: give each
    run its own log file in its directory (a pack's process; a lone job's log is Hydra's).
    apart_unless_captured (in a sweep: a pack that pack_size=auto formed): unless the pack's graph probe captures
    every run, each run trains on in a process of its own (sparsesweep.apart); on a GPU the pack itself then
    trains in a child process, so that this one never holds a CUDA context (a GPU in EXCLUSIVE_PROCESS mode
    takes one process at a time: each run that leaves needs it to itself). Outside a sweep a failure exits: 2
    for a config or directory problem, 1 when files cannot be written."""
    said: dict[int, str | None] = {}  # in a sweep: what each run that failed said, recorded as it failed
    specs = job_specs(jobs, in_sweep, own_logs, said)
    try:
        if apart_unless_captured and len(jobs) > 1 and on_a_gpu(jobs):
            errors, leaving = {}, pack_in_a_child(jobs, specs, said)
        else:
            errors, leaving = train_here(specs, apart_unless_captured)
        if leaving:
            release_device_memory()
            for number, ended in zip(leaving, apart.train_in_processes([jobs[n] for n in leaving])):
                said[number] = ended.said if ended.spoke else apart_ending(jobs[number], specs[number].log, ended)
    except Interrupted as stop:
        stopped = [job.out_dir.name for job in jobs if not rundir.is_finished(job.out_dir)]
        if stopped:
            log.warning("%s: %s saved at its current step; the same command again resumes %s", stop,
                        ", ".join(stopped), "it" if len(stopped) == 1 else "them")
        else:
            log.warning("%s: its runs had finished", stop)
        sys.exit(128 + stop.signum)
    # In a sweep every failure was said as it happened; outside one, did_not_train exits or raises.
    return [said.get(number) if number in said or number not in errors else
            did_not_train(job, spec.log, errors[number], in_sweep)
            for number, (job, spec) in enumerate(zip(jobs, specs))]


def job_specs(jobs: list[Job], in_sweep: bool, own_logs: bool, said: dict) -> list[pack.RunSpec]:
    specs = [pack.RunSpec(job.cfg, job.out_dir, job.overrides, log=run_log(job) if own_logs else log)
             for job in jobs]
    for number, (spec, job) in enumerate(zip(specs, jobs)):
        spec.on_open = lambda spec=spec, job=job: opened(spec, job, own_logs)
        if in_sweep:  # its failed stub at once, not when the pack ends (a pack killed later would lose it)
            spec.on_failure = lambda error, number=number, spec=spec, job=job: said.setdefault(
                number, did_not_train(job, spec.log, error, in_sweep))
    return specs


def train_here(specs: list[pack.RunSpec], apart_unless_captured: bool) -> tuple[dict, list[int]]:
    """The specs trained as one pack in this process: ({number: the error that stopped it}, the numbers of the
    runs that left to train in a process of their own)."""
    outcomes = pack.train_runs(specs, apart_unless_captured)
    errors = {number: error for number, (_, error) in enumerate(outcomes) if error is not None}
    return errors, [number for number, error in errors.items() if isinstance(error, pack.TrainApart)]


def on_a_gpu(jobs: list[Job]) -> bool:
    """Whether the jobs train on a GPU, asked without creating a CUDA context."""
    import torch

    return str(jobs[0].cfg.device) != "cpu" and torch.cuda.is_available()


def pack_in_a_child(jobs: list[Job], specs: list[pack.RunSpec], said: dict) -> list[int]:
    """A sweep's pack trained in a child process (train_apart_child); fills `said` with what its runs said, and
    returns the numbers of those that left to train apart."""
    ended, = apart.train_in_processes([jobs])
    if not ended.spoke:
        said.update({number: apart_ending(job, spec.log, ended) for number, (job, spec) in enumerate(zip(jobs, specs))})
        return []
    leaving = ended.said["apart"]
    said.update({number: line for number, line in enumerate(ended.said["said"]) if number not in leaving})
    return leaving


def apart_ending(job: Job, run_log: logging.Logger, ended: apart.Ended) -> str:
    """What a run trained apart says when its process ended without saying it: stopped by a signal (its state
    saved), or dead (recorded as failed)."""
    signum = ended.returncode - 128
    if signum in (signal.SIGTERM, signal.SIGINT, interrupts.preemption_signal()):
        return f"stopped: by {interrupts.signal_name(signum)} at a checkpoint; the same command again resumes it"
    return did_not_train(job, run_log, RuntimeError(f"its process died (exit code {ended.returncode})"), True)


def release_device_memory() -> None:
    """Gives the GPU memory of the runs that left back to the device, for their own processes."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def did_not_train(job: Job, run_log: logging.Logger, error: BaseException, in_sweep: bool) -> str:
    if isinstance(error, rundir.RunDirBusy):
        run_log.warning("%s: not training it a second time", error)
        if not in_sweep:
            sys.exit(2)
        return f"running elsewhere: {error}"
    if isinstance(error, OSError):  # a full disk, a quota, a file-size limit: the run's files stay as they were
        if not in_sweep:
            run_log.error("could not write the run's files (%s): make room, then the same command again resumes it",
                          error)
            sys.exit(1)
        return record_failure(job, run_log, f"could not write the run's files: {error}")
    if not in_sweep:
        if isinstance(error, ConfigError):
            run_log.error("%s", error)
            sys.exit(2)
        raise error
    # In a sweep one bad run must not stop the others: record it and go on.
    message = str(error) if isinstance(error, ConfigError) else "".join(traceback.format_exception(error))
    return record_failure(job, run_log, message)


def opened(spec: pack.RunSpec, job: Job, own_log: bool) -> None:
    """The directory is this run's: its log file (in a pack) and Hydra's record of the launch, `.hydra/`, as
    Hydra writes it (conf sets hydra.output_subdir to null so that Hydra does not write it before the
    trainer knows the directory is this run's)."""
    if own_log:
        handler = logging.FileHandler(job.out_dir / LOG)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        spec.log.addHandler(handler)
    record = job.out_dir / ".hydra"
    record.mkdir(exist_ok=True)
    for name, node in (("config.yaml", job.cfg), ("hydra.yaml", OmegaConf.create({"hydra": job.hydra_cfg})),
                       ("overrides.yaml", job.hydra_cfg.overrides.task)):
        rundir.write_atomic(record / name, OmegaConf.to_yaml(node).encode())


def run_log(job: Job) -> logging.Logger:
    """A pack member's logger: its lines go to its own log file (opened) and, named by its job number, to the
    pack's console."""
    logger = logging.getLogger(f"sparsesweep.job{job.number}")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    return logger


def record_failure(job: Job, run_log: logging.Logger, message: str) -> str:
    """A `failed` results.json with the message's last line, where that loses nothing; returns the line."""
    run_log.error("run failed: %s", message)
    line = message.strip().splitlines()[-1]
    try:
        run_id = rundir.directory_identity(job.out_dir, rundir.run_config(job.cfg))
    except OmegaConfBaseException:  # a value that does not even resolve
        run_id = None
    try:
        rundir.record_failure(job.out_dir, job.overrides, line, run_id)
    except OSError as error:
        run_log.error("could not record the failure either: %s", error)
    return f"failed: {line}"


def train_apart_child(job_file: Path) -> None:
    """A child of sparsesweep.apart: trains the pickled job, then tells the parent what it said. A pickled list
    of jobs is a sweep's pack (pack_in_a_child): it says what each run said and which left to train apart, whom
    the parent then starts."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stdout)
    job = pickle.loads(job_file.read_bytes())
    if not isinstance(job, list):
        apart.write_said(job_file, train_jobs([job], in_sweep=True, own_logs=True)[0])
        return
    said: dict[int, str | None] = {}
    try:
        _, leaving = train_here(job_specs(job, in_sweep=True, own_logs=True, said=said), apart_unless_captured=True)
    except Interrupted as stop:
        log.warning("%s: its state is saved; the same command again resumes it", stop)
        sys.exit(128 + stop.signum)
    apart.write_said(job_file, {"said": [said.get(number) for number in range(len(job))], "apart": leaving})


if __name__ == "__main__":
    train_apart_child(Path(sys.argv[1]))
