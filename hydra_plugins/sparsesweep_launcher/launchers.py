"""Launchers built on hydra-submitit-launcher's job body (`__call__`: compose the job's config and run it
in its directory; `checkpoint`: on preemption or timeout, requeue the same call, which resumes from the
run's checkpoint). What they change is how jobs are started and waited for:

- LocalPoolLauncher: each job a separate local process (submitit's LocalExecutor), pinned to one GPU slot
  (CUDA_VISIBLE_DEVICES) or, without GPUs, to a CPU slot with a fixed thread count; at most one job per
  slot, the rest queue. (The stock local launcher starts every job at once on the same GPUs.) Ctrl-C or
  SIGTERM to the launcher stops every job at its current step, checkpointed, and says how to resume; a
  launcher that dies however it dies takes its jobs with it (each job watches it: sparsesweep.interrupts).
- SlurmArrayLauncher: one SLURM job array; waits for every task, or returns at once with wait=false.

Both: a job that dies is reported with its log's path; the others go on.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
from omegaconf import OmegaConf

from sparsesweep import interrupts, rundir

log = logging.getLogger(__name__)

POLL_S = 0.2
STOP_TIMEOUT_S = 300  # how long a stopped sweep waits for its jobs to save their state


def outcome(job_return: JobReturn) -> tuple[str, str]:
    """(status, one line) from the run's results.json, for following a sweep from the launcher's console."""
    if job_return.status == JobStatus.FAILED:
        return "failed", "the job's process died"
    if isinstance(job_return.return_value, str):  # the job said why it did not train (sparsesweep.__main__)
        return job_return.return_value.split(":", 1)[0], job_return.return_value
    try:
        results = json.loads((Path(job_return.hydra_cfg.hydra.runtime.output_dir) / rundir.RESULTS).read_text())
    except (OSError, ValueError, AttributeError):
        return "failed", "no results.json"
    status = results.get("status", "unknown")
    if status != "completed":
        return status, f"{status}: {results.get('error', '')}".rstrip(": ")
    gamma, activation = (results["sparsity"][k]["total_pct"] for k in ("by_gamma", "by_activation"))
    return status, (f"test error {results['test_error']:.2f}%, sparsity by gamma {gamma:.1f}%, "
                    f"by activation {activation:.1f}%")


class _QueueingLauncher(BaseSubmititLauncher):
    def job_args(self, number: int, overrides) -> tuple:
        """The arguments of BaseSubmititLauncher.__call__ for job `number`."""
        log.info("\t#%d : %s", number, " ".join(filter_overrides(overrides)))
        return list(overrides), "hydra.sweep.dir", number, f"job_id_for_{number}", Singleton.get_state()

    @staticmethod
    def collect(number: int, job) -> JobReturn:
        try:
            return job.results()[0]
        except Exception as error:  # the process died: killed, out of memory, timed out too often
            last_line = (str(error).strip().splitlines() or ["no message"])[-1]
            log.error("#%d failed (job %s): %s  (log: %s)", number, job.job_id, last_line, job.paths.stderr)
            failed = JobReturn()
            failed.status = JobStatus.FAILED
            failed._return_value = error
            return failed

    @staticmethod
    def report(returns: dict[int, JobReturn]) -> list[JobReturn]:
        statuses = {n: outcome(r)[0] for n, r in sorted(returns.items())}
        counts = ", ".join(f"{k} {v}" for k, v in Counter(statuses.values()).items())
        failed = ", ".join(f"#{n}" for n, status in statuses.items() if status == "failed")
        log.info("All %d jobs ended: %s%s", len(returns), counts, f" (failed: {failed})" if failed else "")
        return [returns[n] for n in sorted(returns)]

    def prepare_sweep_dir(self) -> Path:
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        return sweep_dir


class LocalPoolLauncher(_QueueingLauncher):
    _EXECUTOR = "local"

    def slots(self) -> list[int | None]:
        gpus = self.params["gpus"]
        if gpus is None:
            import torch

            gpus = range(torch.cuda.device_count())
        if gpus:
            return [gpu for gpu in gpus for _ in range(self.params["runs_per_gpu"])]
        parallel = self.params["cpu_parallel"] or max(1, (os.cpu_count() or 1) // self.params["cpu_threads"])
        return [None] * parallel

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit

        sweep_dir = self.prepare_sweep_dir()
        executor = submitit.LocalExecutor(folder=self.params["submitit_folder"],
                                          max_num_timeout=self.params["max_num_timeout"])
        slots = self.slots()
        where = (f"GPUs {sorted(set(slots))}, {self.params['runs_per_gpu']} per GPU" if slots[0] is not None
                 else f"CPU, {self.params['cpu_threads']} thread(s) each")
        log.info("Launching %d jobs locally, at most %d at once on %s; output in %s",
                 len(job_overrides), len(slots), where, sweep_dir)
        queue = list(enumerate(job_overrides, start=initial_job_idx))
        running: dict[int, tuple[int, object]] = {}  # slot -> (job number, job)
        returns: dict[int, JobReturn] = {}
        try:
            with stop_on(signal.SIGTERM):
                while queue or running:
                    for slot in [s for s in range(len(slots)) if s not in running][:len(queue)]:
                        number, overrides = queue.pop(0)
                        running[slot] = (number, self.submit(executor, slots[slot], self.job_args(number, overrides)))
                    time.sleep(POLL_S)
                    for slot, (number, job) in list(running.items()):
                        if job.done():
                            del running[slot]
                            returns[number] = self.collect(number, job)
                            log.info("#%d ended (%d/%d): %s", number, len(returns), len(job_overrides),
                                     outcome(returns[number])[1])
        except KeyboardInterrupt:
            self.stop([job for _, job in running.values()], queued=len(queue), sweep_dir=sweep_dir)
        return self.report(returns)

    @staticmethod
    def stop(jobs, queued: int, sweep_dir: Path) -> None:
        """Ctrl-C or SIGTERM to the launcher: every running job saves its state at its current step and
        stops (SIGTERM, which submitit's local controller passes on); then the launcher exits."""
        log.warning("Interrupted: stopping %d running jobs (each saves a checkpoint at its current step) ...",
                    len(jobs))
        for job in jobs:
            job._process.send_signal(signal.SIGTERM)  # the job's controller process
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while any(not job.done() for job in jobs) and time.monotonic() < deadline:
            time.sleep(POLL_S)
        log.warning("Sweep stopped: %d runs stopped where they were, %d not started. To resume, run the same "
                    "command again with hydra.sweep.dir=%s", len(jobs), queued, sweep_dir)
        sys.exit(130)

    def submit(self, executor, gpu: int | None, args: tuple):
        executor.update_parameters(timeout_min=self.params["timeout_min"], gpus_per_node=0 if gpu is None else 1,
                                   visible_gpus=() if gpu is None else (gpu,))
        # The job's process inherits the environment at submission: its threads, and who launched it, so
        # that it stops if the launcher dies (sparsesweep.interrupts.watch_launcher).
        job_env = {interrupts.LAUNCHER_ENV: interrupts.launcher_token()}
        if gpu is None:
            job_env["OMP_NUM_THREADS"] = str(self.params["cpu_threads"])
        saved = {k: os.environ.get(k) for k in job_env}
        os.environ.update(job_env)
        # A terminal's Ctrl-C goes to the whole process group: the job's controller must not die of it (it
        # would kill the job a second later, mid-checkpoint). Ignored signals are inherited; the job
        # installs its own handler, the launcher stops the controllers itself.
        sigint = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            return executor.submit(self, *args)
        finally:
            signal.signal(signal.SIGINT, sigint)
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


@contextlib.contextmanager
def stop_on(signum: int):
    """Within the block, `signum` interrupts like Ctrl-C (KeyboardInterrupt)."""
    previous = signal.signal(signum, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signum, previous)


class SlurmArrayLauncher(_QueueingLauncher):
    _EXECUTOR = "slurm"
    _OWN_KEYS = {"submitit_folder", "max_num_timeout", "wait"}

    def executor(self):
        """A submitit SLURM executor from this launcher's parameters (as the stock launcher builds it)."""
        import submitit

        executor = submitit.AutoExecutor(cluster="slurm", folder=self.params["submitit_folder"],
                                         slurm_max_num_timeout=self.params["max_num_timeout"])
        shared = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in shared else f"slurm_{k}": v for k, v in self.params.items()
                                      if k not in self._OWN_KEYS})
        return executor

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        sweep_dir = self.prepare_sweep_dir()
        numbers = range(initial_job_idx, initial_job_idx + len(job_overrides))
        args = [self.job_args(n, o) for n, o in zip(numbers, job_overrides)]
        jobs = self.executor().map_array(self, *zip(*args))
        log.info("Submitted SLURM array %s: %d jobs, output in %s; follow it with: "
                 "python -m multirun_analysis status %s", jobs[0].job_id.split("_")[0], len(jobs), sweep_dir, sweep_dir)
        if not self.params["wait"]:
            return []
        return self.report({n: self.collect(n, job) for n, job in zip(numbers, jobs)})
