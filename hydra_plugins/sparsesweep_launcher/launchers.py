"""Launchers built on hydra-submitit-launcher's job body (`__call__`: run the job in its directory;
`checkpoint`: on preemption or timeout, requeue the same call, which resumes from the run's checkpoint).
What they change is what a job is handed, and how jobs are grouped, started and waited for:

- Every job is handed its config as it was composed when the sweep was launched (by the grid sweeper,
  which checked it, for every batch; else here), and trains exactly that: a job that starts hours later
  (queued, in a later batch, requeued) is not changed by an edit to conf/ meanwhile.

- Packs (`pack_size`): jobs that may share a pack (sparsesweep.pack.pack_key) are trained several to a
  process, in lockstep (PackCall, which requeues itself like a single job; each run resumes from its own
  checkpoint). A pack of one is a plain Hydra job. Skipping, resuming and rerunning stay per run: the
  sweeper hands over only the runs still to do.
- LocalPoolLauncher: each pack a separate local process (submitit's LocalExecutor), pinned to one GPU slot
  (CUDA_VISIBLE_DEVICES) or, without GPUs, to a CPU slot with a fixed thread count; at most one pack per
  slot, the rest queue. (The stock local launcher starts every job at once on the same GPUs.) Ctrl-C or
  SIGTERM to the launcher stops every job at its current step, checkpointed, and says how to resume; a
  launcher that dies however it dies takes its jobs with it (each job watches it: sparsesweep.interrupts).
- SlurmArrayLauncher: one SLURM job array, a task per pack; waits for every task, or returns at once with
  wait=false.

Both: a job that dies is reported with its log's path; the others go on. While they wait, the console shows
the sweep live (_live.py: one display on a terminal, plain lines elsewhere).
"""

import contextlib
import copy
import io
import logging
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import submitit
from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides, run_job, setup_globals
from hydra.errors import HydraException
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import OmegaConfBaseException

from hydra_plugins.sparsesweep_launcher._live import RunView, SweepView, outcome, plural
from hydra_plugins.sparsesweep_sweeper import _names as names
from rundir_format import SUBMISSIONS, schema
from sparsesweep import interrupts, rundir

log = logging.getLogger(__name__)

POLL_S = 0.2
SLURM_POLL_S = 5.0  # submitit asks SLURM (sacct) at most this often anyway
STOP_TIMEOUT_S = 300  # how long a stopped sweep waits for its jobs to save their state
# pack_size=auto on GPUs: at most this many runs per pack, which keeps a relaunch's and a failure's unit small.
# How a pack's aggregate rate grows with its size is what benchmarks/gpu_check.py's (c) rows measure.
AUTO_PACK_GPU = 8


@dataclass
class PlannedJob:
    """One job as the launcher hands it over: its number in the sweep, its overrides, the config composed when
    the sweep was launched (None: it did not compose; the job composes it and fails saying why), and Hydra's
    singletons to restore in the job's process."""
    number: int
    overrides: list[str]
    config: DictConfig | None = None
    singleton_state: dict = field(default_factory=dict, repr=False)

    @property
    def run_dir(self) -> Path | None:
        if self.config is None:
            return None
        try:
            return Path(str(self.config.hydra.sweep.dir)) / str(self.config.hydra.sweep.subdir)
        except OmegaConfBaseException:
            return None


class PackCall(submitit.helpers.Checkpointable):
    """The job body of a pack: several Hydra jobs set up as _QueueingLauncher.__call__ sets up one, then
    trained together in this process (sparsesweep.jobs.train_jobs, each run logging to its own directory);
    returns their JobReturns. On preemption or timeout, Checkpointable requeues the same call, and each run
    resumes from its own checkpoint."""

    def __init__(self, launcher: "_QueueingLauncher"):
        self.launcher = launcher

    def __call__(self, pack: list[PlannedJob]) -> list[JobReturn]:
        from sparsesweep import jobs

        Singleton.set_state(pack[0].singleton_state)
        setup_globals()
        if not logging.getLogger().handlers:
            # stdout: stderr keeps only what went wrong, the last line of which names a dead pack's cause
            logging.basicConfig(level=logging.INFO, format=jobs.LOG_FORMAT, stream=sys.stdout)
        members, returns = [], []
        for job in pack:
            overrides, number = job.overrides, job.number
            config = self.launcher.job_config(job)
            HydraConfig.instance().set_config(config)
            with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
                config.hydra.runtime.output_dir = os.path.abspath(
                    os.path.join(str(config.hydra.sweep.dir), str(config.hydra.sweep.subdir)))
            task = copy.deepcopy(config)
            with read_write(task), open_dict(task):
                del task["hydra"]
            members.append(jobs.Job(task, config.hydra, number))
            returns.append(JobReturn(overrides=list(overrides), cfg=task, hydra_cfg=OmegaConf.masked_copy(config, "hydra"),
                                     working_dir=os.getcwd(), task_name=config.hydra.job.name))
        apart = self.launcher.params["pack_size"] == "auto"  # auto packs only runs its graph captures
        for job_return, said in zip(returns, jobs.train_jobs(members, in_sweep=True, own_logs=True,
                                                             apart_unless_captured=apart)):
            job_return.status, job_return._return_value = JobStatus.COMPLETED, said
        return returns


class _QueueingLauncher(BaseSubmititLauncher):
    def __init__(self, **params) -> None:
        super().__init__(**params)
        # job overrides -> config composed at launch, filled by the grid sweeper; never sent with a job
        self.planned_configs: dict[tuple, DictConfig] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "planned_configs": {}}

    def setup(self, **kwargs) -> None:
        """Checks this launcher's own settings before the sweep is planned."""
        super().setup(**kwargs)
        size = self.params["pack_size"]
        if size != "auto" and not (type(size) is int and size >= 1):
            from sparsesweep.refusals import show

            # A quoted number ('3') is a string to Hydra: show the quotes, or the message would refuse 3.
            shown = f"'{size}'" if isinstance(size, str) and size.strip().lstrip("-").isdigit() else show(size)
            log.error("hydra.launcher.pack_size=%s: must be a positive integer or auto, e.g. hydra.launcher."
                      "pack_size=8", shown)
            sys.exit(2)

    def __call__(self, job: PlannedJob) -> JobReturn:
        """BaseSubmititLauncher's job body (whose checkpoint() requeues it), on the job's planned config."""
        Singleton.set_state(job.singleton_state)
        setup_globals()
        return run_job(hydra_context=self.hydra_context, task_function=self.task_function,
                       config=self.job_config(job), job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")

    def job_config(self, job: PlannedJob) -> DictConfig:
        """In the job: a copy of the config composed at launch (a requeued job is handed it again, as it was),
        or for one that did not compose then, composed here (failing in its own job, saying why), with this
        job's id and number."""
        config = copy.deepcopy(job.config) if job.config is not None else self.compose(job.overrides)
        with open_dict(config.hydra.job):
            config.hydra.job.id = submitit.JobEnvironment().job_id
            config.hydra.job.num = job.number
        return config

    def compose(self, overrides: list[str]) -> DictConfig:
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        names.pin_sweep_dir(config, self.config.hydra.sweep.dir)  # the sweep's, not one named by this job
        return config

    def plan(self, job_overrides, initial_job_idx: int) -> list[PlannedJob]:
        """Every job numbered, with its config as the sweeper composed it, else composed now (None: it does
        not compose)."""
        jobs = []
        for number, overrides in enumerate((list(o) for o in job_overrides), start=initial_job_idx):
            config = self.planned_configs.pop(tuple(overrides), None)
            if config is None:
                try:
                    config = self.compose(overrides)
                except (HydraException, OmegaConfBaseException, ValueError):
                    config = None
            jobs.append(PlannedJob(number, overrides, config, Singleton.get_state()))
            log.info("\t#%d : %s", number, " ".join(filter_overrides(overrides)))
        return jobs

    def packs(self, job_overrides, initial_job_idx: int, slots: int, gpus: bool) -> list[list[PlannedJob]]:
        """The planned jobs grouped into packs of at most pack_size runs that may share one (pack_key)."""
        numbered = self.plan(job_overrides, initial_job_idx)
        size = self.params["pack_size"]
        if size == 1 or (size == "auto" and not gpus):
            return [[job] for job in numbered]
        from sparsesweep.graphs import why_not_capturable_config
        from sparsesweep.pack import pack_key

        groups: dict[str, list[PlannedJob]] = {}
        for job in numbered:
            key = f"#{job.number}"  # alone: a config that does not compose or resolve fails in its own job, saying why
            if job.config is not None:
                with contextlib.suppress(OmegaConfBaseException, ValueError):
                    # auto packs only runs a CUDA graph may capture: K eager runs in one process are slower than K
                    # processes
                    reason = why_not_capturable_config(job.config) if size == "auto" else None
                    if reason:
                        log.info("#%d trains in a process of its own (pack_size=auto): no CUDA graph: %s", job.number,
                                 reason)
                    else:
                        key = pack_key(job.config)
            groups.setdefault(key, []).append(job)
        packs = []
        for group in groups.values():
            k = size if size != "auto" else min(AUTO_PACK_GPU, math.ceil(len(group) / slots))
            packs += [group[i:i + k] for i in range(0, len(group), k)]
        packs.sort(key=lambda pack: pack[0].number)
        if any(len(pack) > 1 for pack in packs):
            log.info("%d runs in %d pack%s (%s runs each)%s", len(numbered), len(packs), "s" * (len(packs) > 1),
                     ", ".join(str(n) for n in sorted({len(pack) for pack in packs})),
                     ": a pack trains as one only if its CUDA-graph probe captures every run, else each run in a "
                     "process of its own" if size == "auto" else "")
        return packs

    def body(self, pack: list[PlannedJob]) -> tuple:
        """(callable, its argument) of one pack's job: a plain Hydra job for a pack of one."""
        return (self, pack[0]) if len(pack) == 1 else (PackCall(self), pack)

    @staticmethod
    def collect(pack: list[PlannedJob], job) -> dict[int, JobReturn]:
        numbers = [planned.number for planned in pack]
        try:
            result = job.results()[0]
            return dict(zip(numbers, result if isinstance(result, list) else [result]))
        except Exception as error:  # the process died: killed, out of memory, timed out too often
            last_line = (str(error).strip().splitlines() or ["no message"])[-1]
            log.error("%s failed (job %s): %s  (log: %s)", ", ".join(f"#{n}" for n in numbers), job.job_id,
                      last_line, job.paths.stderr)
            returns = {}
            for planned in pack:
                returns[planned.number] = failed = JobReturn(overrides=list(planned.overrides))
                failed.status = JobStatus.FAILED
                failed._return_value = error
            return returns

    @staticmethod
    def view(packs: list[list[PlannedJob]], **settings) -> SweepView:
        return SweepView([RunView(job.number, " ".join(filter_overrides(job.overrides)), job.run_dir)
                          for pack in packs for job in pack], **settings)

    def ended(self, view: SweepView, pack: list[PlannedJob], job, returns: dict[int, JobReturn]) -> None:
        for number, job_return in self.collect(pack, job).items():
            returns[number] = job_return
            view.ended(number, *outcome(job_return))

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
        sweep_dir = self.prepare_sweep_dir()
        executor = submitit.LocalExecutor(folder=self.params["submitit_folder"],
                                          max_num_timeout=self.params["max_num_timeout"])
        slots = self.slots()
        where = (f"GPUs {sorted(set(slots))}, {self.params['runs_per_gpu']} per GPU" if slots[0] is not None
                 else f"CPU, {self.params['cpu_threads']} thread(s) each")
        log.info("Launching %d jobs locally, at most %d at once on %s; output in %s",
                 len(job_overrides), len(slots), where, sweep_dir)
        queue = self.packs(job_overrides, initial_job_idx, len(slots), gpus=slots[0] is not None)
        running: dict[int, tuple[list, object]] = {}  # slot -> (pack, job)
        returns: dict[int, JobReturn] = {}
        try:
            with stop_on(signal.SIGTERM, signal.SIGINT), self.view(queue) as view:
                while queue or running:
                    for slot in [s for s in range(len(slots)) if s not in running][:len(queue)]:
                        pack = queue.pop(0)
                        running[slot] = (pack, self.submit(executor, slots[slot], *self.body(pack)))
                        view.started(job.number for job in pack)
                    time.sleep(POLL_S)
                    for slot, (pack, job) in list(running.items()):
                        if job.done():
                            del running[slot]
                            self.ended(view, pack, job, returns)
                    view.poll()
        except KeyboardInterrupt:
            self.stop(list(running.values()), queued=sum(len(pack) for pack in queue), sweep_dir=sweep_dir)
        return self.report(returns)

    @staticmethod
    def stop(running: list[tuple[list[PlannedJob], object]], queued: int, sweep_dir: Path) -> None:
        """Ctrl-C, SIGINT or SIGTERM to the launcher (whatever it inherited: a script's background job starts
        with SIGINT ignored): every running job saves its state at its current step and stops (SIGTERM, which
        submitit's local controller passes on); then the launcher exits 130. Runs of a running pack that had
        already finished are not counted as stopped."""
        unfinished = [planned for pack, _ in running for planned in pack
                      if not (planned.run_dir and rundir.is_finished(planned.run_dir))]
        log.warning("Interrupted: stopping %d running runs (each saves a checkpoint at its current step) ...",
                    len(unfinished))
        jobs = [job for _, job in running]
        for job in jobs:
            job._process.send_signal(signal.SIGTERM)  # the job's controller process
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while any(not job.done() for job in jobs) and time.monotonic() < deadline:
            time.sleep(POLL_S)
        stopped = [planned for planned in unfinished
                   if not (planned.run_dir and rundir.is_finished(planned.run_dir))]
        log.warning("Sweep stopped: %s stopped where %s, %d not started. To resume, run the same command again "
                    "with hydra.sweep.dir=%s", plural(len(stopped), "run"), "it was" if len(stopped) == 1 else
                    "they were", queued, sweep_dir)
        sys.exit(130)

    def submit(self, executor, gpu: int | None, body, argument):
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
            return executor.submit(body, argument)
        finally:
            signal.signal(signal.SIGINT, sigint)
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


@contextlib.contextmanager
def stop_on(*signums: int):
    """Within the block, each of `signums` interrupts like Ctrl-C (KeyboardInterrupt), whatever this process
    inherited for it (a shell script's background job starts with SIGINT ignored)."""
    previous = {signum: signal.signal(signum, signal.default_int_handler) for signum in signums}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)



class SlurmArrayLauncher(_QueueingLauncher):
    """Submits the packs as job arrays of at most the cluster's MaxArraySize tasks. A submit limit (per user,
    QOS or association) takes what fits: smaller arrays, then, with wait=true, the rest as the sweep's tasks end;
    with wait=false the rest is recorded as not submitted, for the same command to submit later. Every array
    is recorded in the sweep's submissions.json as it is accepted, so nothing is recorded as submitted that
    was not."""
    _EXECUTOR = "slurm"
    _OWN_KEYS = {"submitit_folder", "max_num_timeout", "wait", "pack_size", "max_array_size"}

    def executor(self):
        """A submitit SLURM executor from this launcher's parameters (as the stock launcher builds it)."""
        executor = submitit.AutoExecutor(cluster="slurm", folder=self.params["submitit_folder"],
                                         slurm_max_num_timeout=self.params["max_num_timeout"])
        shared = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in shared else f"slurm_{k}": v for k, v in self.params.items()
                                      if k not in self._OWN_KEYS})
        return executor

    def max_array_size(self) -> int:
        """hydra.launcher.max_array_size, else the cluster's MaxArraySize (`scontrol show config`), else SLURM's
        default."""
        return self.params["max_array_size"] or cluster_max_array_size()

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        sweep_dir = self.prepare_sweep_dir()
        packs = self.packs(job_overrides, initial_job_idx, self.params["array_parallelism"],
                           gpus=bool(self.params["gpus_per_node"]))
        # One function for the whole array: PackCall, packs of one included, unless every pack is one run.
        body, items = (self, lambda chunk: [pack[0] for pack in chunk]) if all(len(p) == 1 for p in packs) else \
            (PackCall(self), list)
        record = Submissions(sweep_dir, [job.overrides for pack in packs for job in pack])
        executor, size, wait = self.executor(), self.max_array_size(), self.params["wait"]
        pending, waiting, returns = list(packs), [], {}
        retry_at, submitted_at = 0.0, time.time()
        # wait=false: nothing to show; else running: its progress.json written since the submission
        with self.view(packs, since=submitted_at) if wait else contextlib.nullcontext() as view:
            while pending or (wait and waiting):
                if pending and time.monotonic() >= retry_at:
                    chunk = pending[:size]
                    refusal = submit_array(executor, body, items(chunk))
                    if isinstance(refusal, str):
                        if is_size_refusal(refusal) and len(chunk) > 1:
                            size = max(1, len(chunk) // 2)  # what fits: a smaller array at once
                            continue
                        if not is_submit_limit(refusal):
                            record.not_submitted(pending)
                            log.error("%s: %d runs not submitted (the same command submits them once this is "
                                      "fixed)", refusal, sum(len(pack) for pack in pending))
                            sys.exit(2)
                        if not wait:
                            break
                        retry_at = time.monotonic() + SUBMIT_RETRY_S  # or sooner, as a task of the sweep ends
                    else:
                        record.submitted(refusal[0].job_id.split("_")[0], chunk)
                        log.info("Submitted SLURM array %s: %d tasks for %d runs, output in %s; follow it with: "
                                 "python -m multirun_analysis status %s", refusal[0].job_id.split("_")[0],
                                 len(chunk), sum(len(pack) for pack in chunk), sweep_dir, sweep_dir)
                        pending, waiting = pending[len(chunk):], waiting + list(zip(chunk, refusal))
                        continue
                for pack, job in [(pack, job) for pack, job in waiting if wait and job.done()]:
                    waiting.remove((pack, job))
                    self.ended(view, pack, job, returns)
                    retry_at = 0.0  # a slot may have freed
                if view is not None:
                    view.poll()
                time.sleep(SLURM_POLL_S if waiting else POLL_S)
        if pending:
            record.not_submitted(pending)
            log.warning("%d runs not submitted: the cluster's submit limit (%s); the same command submits them, "
                        "once some of the sweep's tasks have ended", sum(len(pack) for pack in pending), refusal)
        return self.report(returns) if wait else []


SUBMIT_RETRY_S = 60  # wait=true after a submit limit: tries again as a task ends, or after this long
DEFAULT_MAX_ARRAY_SIZE = 1001  # SLURM's own default MaxArraySize
# sbatch's refusals for a limit on how many jobs one may submit (slurm/src/common/slurm_errno.c's texts).
SUBMIT_LIMITS = ("SubmitJob", "job submit limit", "MaxSubmit", "QOSMaxJobsPerUser", "AssocMaxJobs")


def cluster_max_array_size() -> int:
    try:
        shown = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        shown = ""
    found = re.search(r"^MaxArraySize\s*=\s*(\d+)", shown, re.MULTILINE)
    return int(found[1]) if found else DEFAULT_MAX_ARRAY_SIZE


def submit_array(executor, body, items) -> list | str:
    """The array's submitit jobs, or SLURM's own line saying why sbatch refused it."""
    with contextlib.redirect_stderr(io.StringIO()):  # submitit prints sbatch's stderr: it is in the line
        try:
            return executor.map_array(body, items)
        except submitit.core.utils.FailedJobError as error:
            lines = [line.strip() for line in str(error).splitlines() if line.strip()]
            return next((line for line in reversed(lines) if "error" in line.lower()), lines[-1] if lines else
                        "sbatch failed without a message")


def is_submit_limit(refusal: str) -> bool:
    return any(words in refusal for words in SUBMIT_LIMITS)


def is_size_refusal(refusal: str) -> bool:
    """A refusal a smaller array may pass: a submit limit, or an array larger than the cluster takes."""
    return is_submit_limit(refusal) or "Invalid job array specification" in refusal


class Submissions:
    """The sweep's submissions.json: arrays recorded as sbatch accepts them, and what a submit limit left. A
    launch replaces what earlier launches recorded of the runs it submits (emptied tasks keep the numbering),
    and keeps the rest."""

    def __init__(self, sweep_dir: Path, runs: list[list[str]]):
        self.path = sweep_dir / SUBMISSIONS
        try:
            earlier = schema.read(self.path) or schema.Submissions()
        except schema.Unreadable:
            earlier = schema.Submissions()
        now = {tuple(run) for run in runs}
        self.arrays = [{"job_id": array.job_id, "tasks": [[run for run in task if tuple(run) not in now]
                                                          for task in array.tasks]} for array in earlier.arrays]
        self.unsubmitted = [run for run in earlier.not_submitted if tuple(run) not in now]

    def submitted(self, job_id: str, packs: list[list[PlannedJob]]) -> None:
        self.arrays.append({"job_id": job_id, "tasks": [[job.overrides for job in pack] for pack in packs]})
        self._write()

    def not_submitted(self, packs: list[list[PlannedJob]]) -> None:
        self.unsubmitted += [job.overrides for pack in packs for job in pack]
        self._write()

    def _write(self) -> None:
        content = schema.Submissions(arrays=self.arrays, not_submitted=self.unsubmitted)  # checked as it is read
        rundir.write_atomic(self.path, rundir.json_bytes(content.model_dump()))


def queued_in_slurm(sweep_dir: Path) -> set[tuple[str, ...]]:
    """The runs (their overrides) of the sweep's recorded arrays whose task SLURM still has, pending or running
    (squeue); empty without a record or without squeue."""
    try:
        record = schema.read(sweep_dir / SUBMISSIONS)
    except schema.Unreadable:
        return set()
    if record is None or not record.arrays:
        return set()
    try:
        listed = subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return set()
    tasks = set(listed.stdout.split()) if listed.returncode == 0 else set()
    return {tuple(run) for array in record.arrays for number, task in enumerate(array.tasks)
            if f"{array.job_id}_{number}" in tasks for run in task}
