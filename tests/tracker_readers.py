"""The trackers read back through their own APIs, for the logger and export tests: TensorBoard's EventAccumulator
and its HParams backend, W&B's own reader of its offline run files (`wandb leet inspect --json`), MLflow's
search_runs and metric history. Offline: no tracker reaches the network."""
import importlib.util
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from rundir_format import identity_payload, trackers
from sparsesweep import rundir

# TensorBoard tag -> metrics.jsonl key: what every epoch logs besides the sparsity of each layer.
EPOCH_TAGS = trackers.EPOCH_SCALARS
LAYERS = [f"C{i}" for i in range(1, 8)]
FINAL_TAGS = {"final/test_error_pct", "final/zeroed_test_error_pct", "final/sparsity_by_gamma_pct",
              "final/sparsity_by_activation_pct"}
OFFLINE = {"WANDB_MODE": "offline", "WANDB_ERROR_REPORTING": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
           "DO_NOT_TRACK": "true", "MLFLOW_ALLOW_FILE_STORE": "true"}


def installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def needs(package: str):
    """Skips a test where the tracker's package is not installed (CI installs them all and checks, .ci/run)."""
    return pytest.mark.skipif(not installed(package), reason=f"{package} is not installed (pip install '.[trackers]')")


needs_wandb, needs_mlflow = needs("wandb"), needs("mlflow")


@pytest.fixture(scope="module")
def offline():
    """No tracker reaches the network: W&B offline, no telemetry (the trainers started here inherit it)."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in OFFLINE.items():
            patch.setenv(name, value)
        yield


def read_metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / rundir.METRICS).read_text().splitlines()]


def read_results(run_dir) -> dict:
    return json.loads((run_dir / rundir.RESULTS).read_text())


def layer_sparsity(run_dir, layer) -> list[float]:
    """% of the layer's features with |gamma| < 1e-3 after each epoch, from bn_history.npz."""
    gamma = np.load(run_dir / rundir.BN_HISTORY)[f"{layer}_gamma"][1:]
    return list(100.0 * (np.abs(gamma) < 1e-3).mean(axis=1))


def identity_params(run_dir) -> dict[str, str]:
    """The run's identity flattened, as MLflow holds params (text)."""
    return {key: str(value) for key, value in trackers.flat(identity_payload(read_results(run_dir)["config"])).items()}


# ---- the trackers' own readers ------------------------------------------------------------------------------------

def tensorboard_events(logdir):
    """Every event TensorBoard shows for logdir (size_guidance 0: keep all, not a sample)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    return EventAccumulator(str(logdir), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0}).Reload()


def tensorboard_shown(logdir):
    """What the TensorBoard server shows for logdir (its plugin accumulator: every value a tensor; a restart's
    session START purges what was logged at and after its step, histograms included)."""
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator

    return EventAccumulator(str(logdir), size_guidance={"tensors": 0}).Reload()


def hparams_session_groups(logdir):
    """What TensorBoard's HParams dashboard shows for logdir: its backend's ListSessionGroups answer."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import api_pb2, backend_context, list_session_groups

    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, str(logdir))
    backend = backend_context.Context(base_plugin.TBContext(logdir=str(logdir), data_provider=provider,
                                                            multiplexer=multiplexer))
    request = api_pb2.ListSessionGroupsRequest(start_index=0, slice_size=100, allowed_statuses=[
        api_pb2.STATUS_UNKNOWN, api_pb2.STATUS_SUCCESS, api_pb2.STATUS_FAILURE, api_pb2.STATUS_RUNNING])
    return list_session_groups.Handler(context.RequestContext(), backend, "", request).run().session_groups


def wandb_inspect(path, *flags):
    """W&B's own reader of an offline run file (`wandb leet inspect --json`): its records, or with --summary the
    run's state."""
    done = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", *flags, str(path)],
                          capture_output=True, text=True, check=True, env={**os.environ, **OFFLINE})
    return json.loads(done.stdout) if flags else [json.loads(line) for line in done.stdout.splitlines()]


def wandb_runs(run_dir) -> list[tuple[dict, dict, list[dict]]]:
    """(state, run record, history items) of each W&B run file of a run directory, oldest first (a resume adds
    one)."""
    runs = []
    for path in sorted((run_dir / "wandb").glob("offline-run-*"),
                       key=lambda path: (re.search(r"-(\d{8}_\d{6})-", path.name)[1], path.name)):
        records = wandb_inspect(path)
        run_records = [r["run"] for r in records if r["type"] == "run"]
        runs.append((wandb_inspect(path, "--summary"), run_records[0] if run_records else {},
                     [r["history"]["item"] for r in records if r["type"] == "history"]))
    return runs


def mlflow_client(store):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=store.as_uri())


def mlflow_runs(store):
    """Every run of the store's `sparsesweep` experiment, as mlflow.search_runs gives them (a DataFrame)."""
    import mlflow

    mlflow.set_tracking_uri(store.as_uri())
    return mlflow.search_runs(experiment_names=["sparsesweep"])


def parent_and_children(store) -> tuple[list[dict], list[dict]]:
    """The store's runs without a parent, and those nested in one of them."""
    records = mlflow_runs(store).to_dict("records")
    parents = [r for r in records if not isinstance(r.get("tags.mlflow.parentRunId"), str)]
    return parents, [r for r in records if r.get("tags.mlflow.parentRunId") in {p["run_id"] for p in parents}]


def params_of(record: dict) -> dict[str, str]:
    return {key.removeprefix("params."): value for key, value in record.items()
            if key.startswith("params.") and isinstance(value, str)}


def mlflow_history(store, run_id, tag) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in mlflow_client(store).get_metric_history(run_id, tag))
