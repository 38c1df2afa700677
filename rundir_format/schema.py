"""The run directory's files as pydantic models: the one description of what each file holds, and the one way
to read one (`read`). A file that does not match is an `Unreadable` error naming the file and its first
problem, as is one that is not a regular file within its size cap (rundir_format.reading, which reads every
file); a file that is not there reads as None. No torch: the collector runs wherever the files are.

Models follow what the trainer writes (docs/results.md). Strict types (a number written as text, a boolean
for a count, NaN are wrong types); keys a newer trainer adds are kept (extra="allow"), keys a reader relies
on are required. Fields added to a file after its schema number was set are optional (older runs lack them).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError

from rundir_format import (COMPLETED, DIVERGED, FAILED, HYDRA_OVERRIDES, IDENTITY, METRICS, MULTIRUN, PROGRESS,
                           PRUNE, PRUNE_SCHEMA, RESULTS, RESULTS_SCHEMA, SUBMISSIONS, SWEEP_PLAN, TRACKERS)
from rundir_format.reading import Unreadable, as_path, read_bytes  # noqa: F401  (Unreadable: what `read` raises)

RunId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16}$")]  # run_identity: sha256[:16]
Percent = Annotated[float, Field(ge=0, le=100)]
Count = Annotated[int, Field(ge=0)]
Positive = Annotated[int, Field(gt=0)]
Seconds = Annotated[float, Field(ge=0)]


class FileModel(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow", allow_inf_nan=False, frozen=True)


# ---- results.json ---------------------------------------------------------------------------------------------

class SparsityBlock(FileModel):
    """One criterion's sparsity: the share of features inactive, in all and per layer (and stage)."""
    threshold: float
    total_pct: Percent
    per_layer_pct: dict[str, Percent]
    inactive: Count
    features: Count
    per_layer_inactive: dict[str, Count]
    per_stage_pct: dict[str, Percent] | None = None  # models with stages only (ResNet: conv1, res2-res5)


class Sparsity(FileModel):
    by_gamma: SparsityBlock            # |gamma| < 1e-3
    by_gamma_alt: SparsityBlock        # |gamma| < 1e-2
    by_activation: SparsityBlock       # max activation < 1e-12
    by_activation_alt: SparsityBlock   # max activation < 1e-4


class LayerSelectivity(FileModel):
    mean: float
    mean_active: float | None  # over the features not inactive by activation; None when there are none
    histogram: list[Count]


class Selectivity(FileModel):
    ratio: float
    bin_edges: Annotated[list[float], Field(min_length=2)]
    per_layer: dict[str, LayerSelectivity]


class Provenance(FileModel):
    """What made a run (sparsesweep.provenance): never part of its identity. Added later: runs from before it
    have none. A failed run's stub has the process's part only: no CUDA, cuDNN nor device keys."""
    sparsesweep: str                  # its version
    git_commit: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{40}([0-9a-f]{24})?$")] | None = None
    git_dirty: bool | None = None     # tracked files differed from the commit; None: unknown (no checkout)
    python: str
    host: str
    slurm_job_id: str | None = None
    torch: str | None = None
    cuda: str | None = None           # the CUDA version torch was built for; None: a CPU build
    cudnn: int | None = None          # torch.backends.cudnn.version()
    device: str | None = None         # cpu, cuda:0, ...
    device_name: str | None = None    # the GPU's name, or the CPU's model


class FailedResults(FileModel):
    """A run that did not train: a stub. Without run_id when its config did not compose."""
    schema_: Literal[RESULTS_SCHEMA] = Field(alias="schema")
    status: Literal[FAILED]
    run_id: RunId | None = None
    overrides: list[str]
    error: str
    provenance: Provenance | None = None  # added later


class EndedResults(FileModel):
    """What a run that trained writes, diverged or completed."""
    schema_: Literal[RESULTS_SCHEMA] = Field(alias="schema")
    run_id: RunId
    config: dict[str, Any]     # the resolved config
    overrides: list[str]
    model: str
    dataset: str
    optimizer: str
    regularizer: str           # l2 | wd | none
    coefficient: Annotated[float, Field(ge=0)]
    batch_size: Positive
    seed: int
    epochs: Count
    iterations: Count
    wall_time_s: Seconds
    device_time_s: Seconds | None = None  # added later: runs from before it have none
    graph_steps: Count | None = None      # added later: steps taken in a CUDA graph replay
    train_loss: Annotated[float, Field(ge=0)] | None
    train_error: Percent | None
    test_loss: Annotated[float, Field(ge=0)] | None
    test_error: Percent | None
    test_top5_error: Percent | None = None
    provenance: Provenance | None = None  # added later: the process that finished the run


class DivergedResults(EndedResults):
    status: Literal[DIVERGED]


class FeatureLayer(FileModel):
    """A layer of features as measurement found it (sparsesweep.models.discovery)."""
    activation: str           # relu, relu6, leaky_relu, silu, gelu, hardswish, or none
    stage: str | None
    features: Positive


class CompletedResults(EndedResults):
    status: Literal[COMPLETED]
    train_loss: Annotated[float, Field(ge=0)]
    train_error: Percent
    test_error: Percent
    measure_time_s: Seconds
    sparsity: Sparsity
    selectivity: Selectivity
    zeroed_test_error: Percent
    zeroed_test_top5_error: Percent | None = None
    feature_layers: dict[str, FeatureLayer] | None = None   # added later: runs from before it have none
    unmeasured_layers: dict[str, str] | None = None         # norm layer -> why it is not measured


Results = Annotated[Union[CompletedResults, DivergedResults, FailedResults], Field(discriminator="status")]


# ---- the other files of a run -----------------------------------------------------------------------------

class Identity(FileModel):
    """identity.json: written when a run starts; whose directory this is."""
    run_id: RunId
    overrides: list[str]
    config: dict[str, Any]
    provenance: Provenance | None = None  # added later: the process that started the run


class MetricsRow(FileModel):
    """One line of metrics.jsonl: an epoch's end."""
    epoch: Positive
    step: Count
    lr: float
    train_loss: Annotated[float, Field(ge=0)]
    train_error: Percent
    test_loss: Annotated[float, Field(ge=0)] | None
    test_error: Percent
    test_top5_error: Percent | None = None
    sparsity_gamma_pct: Percent
    time_s: Seconds


class Progress(FileModel):
    """progress.json: where a run stands while it trains."""
    run_id: RunId
    epoch: Positive
    epochs: Positive
    step: Count
    total_steps: Count
    steps_per_s: Annotated[float, Field(ge=0)] | None
    updated: float  # Unix time


class Trackers(FileModel):
    """trackers.json (rundir_format.trackers), written by a run's loggers: in a run directory, the last epoch
    the trackers hold and the MLflow run of each store; in a sweep directory, the sweep's MLflow parent run."""
    logged_through: Count = 0
    mlflow: dict[str, str] = {}  # "TRACKING_URI#EXPERIMENT" -> MLflow run id


class BeforeAfter(FileModel):
    before: float
    after: float


class Counts(FileModel):
    before: Positive
    after: Count


class PrunedFeatures(Counts):
    removed: Count
    per_layer: dict[str, Counts] | None = None


class Flops(Counts):
    input_shape: list[Positive] | None = None


class Latency(FileModel):
    before: Annotated[float, Field(gt=0)]
    after: Annotated[float, Field(gt=0)]
    batch_size: Positive
    repeats: Positive


class Prune(FileModel):
    """prune.json: written by python -m sparsesweep.prune (or prune.after_training)."""
    schema_: Literal[PRUNE_SCHEMA] = Field(alias="schema")
    run_id: RunId | None = None  # prune.json files from before it carried the run_id have none
    threshold: float
    features: PrunedFeatures
    params: Counts
    flops: Flops
    latency_ms: dict[str, Latency]  # per device: cpu, cuda
    test_error: BeforeAfter
    test_top5_error: BeforeAfter
    constant_features_folded: Count | None = None
    max_abs_output_change: float | None = None


# ---- the files of a sweep -------------------------------------------------------------------------------------

class SweepPlan(FileModel):
    """sweep_plan.json: every run of the sweep, by its overrides."""
    runs: list[list[str]]
    # Added later (older plans have none): each run's directory, by its name below the sweep directory; null
    # where it is not known (a run whose config did not compose, under a hydra.sweep.subdir of the user's).
    dirs: list[str | None] | None = None


class SlurmArray(FileModel):
    """One job array the SLURM launcher submitted: its id, and the runs (by overrides) of each of its tasks."""
    job_id: str
    tasks: list[list[list[str]]]


class Submissions(FileModel):
    """submissions.json: the SLURM launcher's arrays, and the runs a submit limit left for a later launch."""
    arrays: list[SlurmArray] = []
    not_submitted: list[list[str]] = []


class HydraPart(BaseModel):
    """The parts of Hydra's config that are read; the rest is Hydra's."""
    model_config = ConfigDict(strict=True, extra="ignore")


class TaskOverrides(HydraPart):
    task: list[str] = []


class SweeperPart(HydraPart):
    params: dict[str, Any] | None = None
    grid: list[dict[str, Any]] | None = None


class MultirunHydra(HydraPart):
    overrides: TaskOverrides = TaskOverrides()
    sweeper: SweeperPart = SweeperPart()


class Multirun(HydraPart):
    """multirun.yaml (the config of a sweep's last launch): its command-line overrides and grid."""
    hydra: MultirunHydra = MultirunHydra()


# ---- reading --------------------------------------------------------------------------------------------------

JSON_FILES = {RESULTS: TypeAdapter(Results), IDENTITY: TypeAdapter(Identity), PRUNE: TypeAdapter(Prune),
              PROGRESS: TypeAdapter(Progress), SWEEP_PLAN: TypeAdapter(SweepPlan),
              SUBMISSIONS: TypeAdapter(Submissions), TRACKERS: TypeAdapter(Trackers)}
YAML_FILES = {MULTIRUN: TypeAdapter(Multirun), HYDRA_OVERRIDES.name: TypeAdapter(list[str])}
METRICS_ROW = TypeAdapter(MetricsRow)
SHOWN_INPUT = 40  # characters of a wrong value quoted in a problem


def first_problem(error: ValidationError, line: int | None = None) -> str:
    """`key.subkey: what is wrong (got VALUE)` of the first error, `line N: ...` in a JSON-lines file. The
    status tag pydantic puts first in the key of a results.json is left out."""
    first = error.errors(include_url=False)[0]
    location, kind, message = [str(part) for part in first["loc"]], first["type"], first["msg"]
    if location[:1] in ([COMPLETED], [DIVERGED], [FAILED]):
        location = location[1:]
    got = f" (got {shown(first.get('input'))})" if kind not in ("json_invalid", "missing") else ""
    if kind == "union_tag_invalid":  # the status is none of the known ones
        location, message, got = ["status"], f"Input should be {first['ctx']['expected_tags']}", \
            f" (got {shown(first['ctx']['tag'])})"
    elif kind == "union_tag_not_found":
        location, message, got = ["status"], "Field required", ""
    elif kind == "json_invalid" and line is not None:  # the position is within the line
        message = message.replace(" at line 1 column ", " at column ")
    where = ([f"line {line}"] if line is not None else []) + ([".".join(location)] if location else [])
    return ": ".join(where + [message]) + got


def shown(value) -> str:
    """A wrong value as the file has it (JSON), shortened."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= SHOWN_INPUT else text[:SHOWN_INPUT - 1] + "…"


def read(path: Path):
    """The content of the run or sweep file `path` (its kind by its name) as its model; None when there is
    no such file. Raises Unreadable when it does not match its schema."""
    path = as_path(path)
    content = read_bytes(path)  # a regular file within its cap, or Unreadable
    if content is None:
        return None
    if path.name == METRICS:
        return read_metrics(path, content)
    try:
        if path.name in YAML_FILES:
            try:
                loaded = yaml.safe_load(content)
            except yaml.YAMLError as error:
                raise Unreadable(path, f"not YAML: {str(error).splitlines()[0]}") from error
            return YAML_FILES[path.name].validate_python({} if loaded is None and path.name == MULTIRUN else loaded)
        return JSON_FILES[path.name].validate_json(content)
    except ValidationError as error:
        raise Unreadable(path, first_problem(error)) from error


def read_metrics(path: Path, content: bytes) -> list[MetricsRow]:
    """metrics.jsonl: one row per line (blank lines ignored)."""
    rows = []
    for number, line in enumerate(content.splitlines(), start=1):
        if line.strip():
            try:
                rows.append(METRICS_ROW.validate_json(line))
            except ValidationError as error:
                raise Unreadable(path, first_problem(error, number)) from error
    return rows
