"""rundir_format.schema against what the trainer really writes: a completed (and pruned), a diverged and a failed
run trained in this process, and a real sweep's own files. Every file validates, and the models describe every
key the trainer writes (none is left to extra="allow"), so that a key added on one side fails here until the
schema (and docs/results.md) says what it is. Malformed files give their first problem in one line."""
import json
import shutil

import pytest
from pydantic import BaseModel

from conftest import SMOKE, cli, compose_config
from rundir_format import (HYDRA_OVERRIDES, IDENTITY, METRICS, MULTIRUN, PROGRESS, PRUNE, RESULTS, SWEEP_PLAN,
                           schema)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """{kind: run directory}: a completed run pruned after training, a diverged one, a failed stub."""
    from sparsesweep import pack, rundir

    root = tmp_path_factory.mktemp("schema")
    pack.train(compose_config([*SMOKE, "prune.after_training=true", "prune.latency_repeats=2"]), root / "completed")
    pack.train(compose_config([*SMOKE, "optimizer=sgd", "optimizer.lr=1e30"]), root / "diverged")
    rundir.record_failure(root / "failed", ["batch_size=0"], "batch_size=0: must be a positive integer")
    return {kind: root / kind for kind in ("completed", "diverged", "failed")}


def extra_keys(model, where: str = "") -> list[str]:
    """Every key a model (and the models inside it) kept as extra: a key the schema does not describe."""
    if isinstance(model, list):
        return [key for index, item in enumerate(model) for key in extra_keys(item, f"{where}[{index}]")]
    if isinstance(model, dict):
        return [key for name, item in model.items() for key in extra_keys(item, f"{where}.{name}")]
    if not isinstance(model, BaseModel):
        return []
    found = [f"{where}.{key}" for key in model.model_extra or {}]
    return found + [key for name in type(model).model_fields
                    for key in extra_keys(getattr(model, name), f"{where}.{name}")]


def test_a_completed_and_pruned_run_validates_with_nothing_undescribed(trained):
    run_dir = trained["completed"]
    results = schema.read(run_dir / RESULTS)
    assert isinstance(results, schema.CompletedResults) and results.sparsity.by_gamma.features > 0
    assert results.run_id == schema.read(run_dir / IDENTITY).run_id == schema.read(run_dir / PRUNE).run_id
    metrics = schema.read(run_dir / METRICS)
    assert [row.epoch for row in metrics] == [1, 2, 3]
    progress = schema.read(run_dir / PROGRESS)
    assert (progress.epochs, progress.total_steps) == (3, 60)
    for name in (RESULTS, IDENTITY, PRUNE, PROGRESS):
        assert extra_keys(schema.read(run_dir / name)) == [], name
    assert extra_keys(metrics) == []


def test_a_diverged_run_and_a_failed_stub_validate(trained):
    diverged = schema.read(trained["diverged"] / RESULTS)
    assert isinstance(diverged, schema.DivergedResults) and diverged.test_error is None
    assert extra_keys(diverged) == []
    failed = schema.read(trained["failed"] / RESULTS)
    assert isinstance(failed, schema.FailedResults) and failed.run_id is None and failed.overrides == ["batch_size=0"]
    assert extra_keys(failed) == []


def test_a_file_that_is_not_there_reads_as_none(tmp_path):
    assert schema.read(tmp_path / RESULTS) is None and schema.read(tmp_path / "missing" / METRICS) is None


def edited(results: dict, dotted: str, value) -> dict:
    results = json.loads(json.dumps(results))
    *parents, leaf = dotted.split(".")
    node = results
    for key in parents:
        node = node[key]
    if value is KeyError:
        del node[leaf]
    else:
        node[leaf] = value
    return results


@pytest.mark.parametrize("dotted, value, problem", [
    ("test_error", "12.5", 'test_error: Input should be a valid number (got "12.5")'),
    ("batch_size", True, "batch_size: Input should be a valid integer (got true)"),
    ("sparsity.by_gamma.total_pct", 120.0, "sparsity.by_gamma.total_pct: Input should be less than or equal to 100 "
                                           "(got 120.0)"),
    ("sparsity.by_gamma", KeyError, "sparsity.by_gamma: Field required"),
    ("status", "finished", "status: Input should be 'completed', 'diverged', 'failed' (got \"finished\")"),
    ("schema", 2, "schema: Input should be 1 (got 2)"),
    ("run_id", "not-a-hash", "run_id: String should match pattern '^[0-9a-f]{16}$' (got \"not-a-hash\")"),
])
def test_a_malformed_results_json_names_its_first_problem(trained, tmp_path, dotted, value, problem):
    results = json.loads((trained["completed"] / RESULTS).read_text())
    (tmp_path / RESULTS).write_text(json.dumps(edited(results, dotted, value)))
    with pytest.raises(schema.Unreadable) as error:
        schema.read(tmp_path / RESULTS)
    assert error.value.problem == problem and error.value.path == tmp_path / RESULTS
    assert str(error.value) == f"{tmp_path / RESULTS}: {problem}"


@pytest.mark.parametrize("name, content, problem", [
    (RESULTS, '{"schema": 1, "status": "compl', "Invalid JSON: EOF while parsing a string at line 1 column 30"),
    (RESULTS, "[1, 2]", "Input should be an object (got [1, 2])"),
    (RESULTS, "", "Invalid JSON: EOF while parsing a value at line 1 column 0"),
    (METRICS, '{"epoch": 1, "step": 20, "lr": 0.1, "train_loss": 1.0, "train_error": 5.0, "test_loss": 1.0, '
              '"test_error": 5.0, "sparsity_gamma_pct": 0.0, "time_s": 1.0}\n{"epoch": 2, "st',
     "line 2: Invalid JSON: EOF while parsing a string at column 16"),
    (SWEEP_PLAN, '{"runs": [["seed=0"], "seed=1"]}', 'runs.1: Input should be a valid array (got "seed=1")'),
    (MULTIRUN, "hydra:\n  sweeper:\n    grid: [{a: 1}\n", "not YAML: while parsing a flow sequence"),
    (MULTIRUN, "hydra:\n  overrides:\n    task: seed=0\n", 'hydra.overrides.task: Input should be a valid list '
                                                         '(got "seed=0")'),
])
def test_other_malformed_files_name_their_first_problem(tmp_path, name, content, problem):
    (tmp_path / name).write_text(content)
    with pytest.raises(schema.Unreadable) as error:
        schema.read(tmp_path / name)
    assert error.value.problem == problem


def test_a_directory_in_place_of_a_file_is_unreadable(tmp_path):
    (tmp_path / RESULTS).mkdir()
    with pytest.raises(schema.Unreadable) as error:
        schema.read(tmp_path / RESULTS)
    assert error.value.problem == "a directory, not a regular file: not read"


@pytest.mark.slow
def test_a_real_sweeps_own_files_validate(tmp_path):
    sweep = tmp_path / "sweep"
    code, output = cli("sparsesweep", "-m", *SMOKE, "seed=0,1", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert code == 0, output
    plan = schema.read(sweep / SWEEP_PLAN)
    assert sorted(map(sorted, plan.runs)) == [["+experiment=smoke", "seed=0"], ["+experiment=smoke", "seed=1"]]
    multirun = schema.read(sweep / MULTIRUN)
    assert multirun.hydra.overrides.task == ["+experiment=smoke", "seed=0,1"]
    for run_dir in (path.parent for path in sweep.glob(f"*/{RESULTS}")):
        assert sorted(schema.read(run_dir / HYDRA_OVERRIDES)) == sorted(schema.read(run_dir / RESULTS).overrides)
        assert extra_keys(schema.read(run_dir / RESULTS)) == []
    shutil.rmtree(sweep)
