"""multirun_analysis on runs made by the trainer: tables equal the closed-form means and stds of hand-set
results (copies of a real run trained in this process); bad runs are reported, never fatal; figures are
written; Tables 3 and 5 from real VGG-16 and ResNet-50 sweeps."""
import json
import math
import shutil
import statistics
from collections import Counter

import pytest
import torch

from conftest import SMOKE, cli, make_tiny_imagenet
from multirun_analysis import render, tables
from multirun_analysis.__main__ import main
from multirun_analysis.load import load_runs
from rundir_format.schema import read as schema_read
from rundirs import Sweep, train_smoke_run


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """One real run (Adam, L2 1e-4, the smoke size on shapes_clean), trained in this process."""
    return train_smoke_run(tmp_path_factory.mktemp("analysis") / "template", overrides=())


# Set by hand in copies of the template run (what two smoke seeds end with depends on the machine's kernels,
# and may be equal): per (dataset, seed), test error %, train and test loss, % sparsity by gamma.
KNOWN = {("shapes_clean", 0): (10.0, 0.5, 0.25, 60.0), ("shapes_clean", 1): (14.0, 1.5, 0.75, 70.0),
         ("shapes_cluttered", 0): (30.0, 1.0, 2.0, 20.0), ("shapes_cluttered", 1): (40.0, 2.0, 3.0, 50.0)}
# Their cells in closed form: of two values a and b, the mean is (a + b) / 2 and the std (n - 1) |a - b| / sqrt 2.
EXPECTED = {"shapes_clean": {"test_error": (12.0, 4 / math.sqrt(2)), "train_loss": (1.0, 1 / math.sqrt(2)),
                             "test_loss": (0.5, 0.5 / math.sqrt(2)), "sparsity_gamma": (65.0, 10 / math.sqrt(2))},
            "shapes_cluttered": {"test_error": (35.0, 10 / math.sqrt(2)), "train_loss": (1.5, 1 / math.sqrt(2)),
                                 "test_loss": (2.5, 1 / math.sqrt(2)), "sparsity_gamma": (35.0, 30 / math.sqrt(2))}}


@pytest.fixture(scope="module")
def known(template, tmp_path_factory):
    """The task-difficulty grid (clean/cluttered x 2 seeds): copies of the template with the KNOWN values."""
    runs = Sweep(tmp_path_factory.mktemp("known"), template)
    for (dataset, seed), (test_error, train_loss, test_loss, by_gamma) in KNOWN.items():
        background = dataset.split("_")[1]
        runs.add("adam", seed, by_gamma, name=f"dataset={dataset},seed={seed}", dataset=dataset,
                 config={"dataset.name": dataset, "dataset.background": background},
                 test_error=test_error, train_loss=train_loss, test_loss=test_loss)
    return runs.root


@pytest.fixture(scope="module")
def bad(template, tmp_path_factory):
    """A run that diverged (trained here) and a completed one whose results.json was cut by another tool."""
    root = tmp_path_factory.mktemp("bad")
    train_smoke_run(root / "diverged", overrides=("optimizer=sgd", "optimizer.lr=1e30", "seed=5"))
    shutil.copytree(template, root / "truncated", ignore=shutil.ignore_patterns("*.pt"))
    (root / "truncated" / "results.json").write_text((template / "results.json").read_text()[:200])
    return root


def test_difficulty_table_cells_are_the_means_and_stds_of_the_runs(known):
    table = tables.build(tables.TABLES["difficulty"], load_runs([known], completed_only=True))
    assert list(table.index) == ["clean", "cluttered"]  # the paper's rows, in its order
    for background, paper in (("clean", 70.0), ("cluttered", 57.0)):
        mean, std = EXPECTED[f"shapes_{background}"]["sparsity_gamma"]
        row = table.loc[background]
        assert row[("", "sparsity_gamma", "mean")] == pytest.approx(mean)
        assert row[("", "sparsity_gamma", "std")] == pytest.approx(std)
        assert row[("", "sparsity_gamma", "n")] == 2
        assert row[("", "sparsity_gamma", "paper")] == paper
        assert row[("", "sparsity_gamma", "delta")] == pytest.approx(mean - paper)


def test_runs_outside_the_papers_rows_get_rows_of_their_own(known):
    # Table 6 is keyed by (dataset, batch size): the smoke runs on the renderings add two rows after the
    # paper's eight, with the seeds' mean and std of every metric and no paper value.
    table = tables.build(tables.TABLES["table6"], load_runs([known], completed_only=True))
    assert len(table) == 10 and table.iloc[:8].xs("n", axis=1, level="stat").eq(0).all().all()
    for dataset, cells in EXPECTED.items():
        row = table.loc[(dataset, "40")]
        for metric, (mean, std) in cells.items():
            assert row[("", metric, "mean")] == pytest.approx(mean) and row[("", metric, "std")] == pytest.approx(std)
            assert row[("", metric, "n")] == 2 and math.isnan(row[("", metric, "paper")])


def test_corrupt_and_diverged_runs_are_skipped_and_reported(known, bad, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    assert main(["difficulty", str(known), str(bad)]) == 0
    output = capsys.readouterr()
    assert "65.0 ±7.1 (2)" in output.out  # the clean cell (EXPECTED) ignores the two bad runs
    truncated, diverged = output.err.splitlines()
    assert truncated.startswith(f"skipped 1 run(s): unreadable: {bad / 'truncated' / 'results.json'}: Invalid JSON: "
                                "EOF while parsing") and diverged == "skipped 1 run(s): status diverged"


def test_merged_sweeps_count_a_duplicated_run_once(known, tmp_path):
    copy = tmp_path / "relaunch"
    one_run = next(known.glob("*/results.json")).parent
    shutil.copytree(one_run, copy / one_run.name)
    skipped = Counter()
    runs = load_runs([known, copy], skipped, completed_only=True)
    assert len(runs) == 4 and skipped == {"duplicate of a run found in another directory": 1}


def test_cells_without_runs_are_missing_never_zero(known):
    table = tables.build(tables.TABLES["table1"], load_runs([known], completed_only=True))
    assert len(table) == 29 and table.xs("mean", axis=1, level="stat").isna().all().all()
    text = render.render(tables.TABLES["table1"], table)
    assert "0.0 (" not in text and "–" in text


def test_every_format_is_written_with_out(known, tmp_path, capsys):
    assert main(["difficulty", str(known), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "difficulty.md").read_text().count("\n|") == 4  # header, separator, 2 rows
    assert "\\begin{tabular}" in (tmp_path / "difficulty.tex").read_text()
    assert capsys.readouterr().out.splitlines()[0] == f"wrote difficulty.{{txt,md,tex,csv}} to {tmp_path}"
    assert (tmp_path / "difficulty.txt").read_text().startswith("Task difficulty: clean vs cluttered")
    csv_lines = (tmp_path / "difficulty.csv").read_text().splitlines()
    assert csv_lines[0].startswith("background,sparsity_gamma_mean,sparsity_gamma_std,sparsity_gamma_n")
    assert len(csv_lines) == 3


# ---- what made the runs ---------------------------------------------------------------------------------------

H100 = {"provenance.sparsesweep": "0.2.0", "provenance.git_commit": "ab" * 20, "provenance.git_dirty": True,
        "provenance.torch": "2.14.0+cu128", "provenance.cuda": "12.8", "provenance.cudnn": 91002,
        "provenance.device": "cuda:0", "provenance.device_name": "NVIDIA H100 80GB HBM3", "provenance.host": "gpu07",
        "provenance.slurm_job_id": "4242_1"}
H100_VERSION, H100_DEVICE = "sparsesweep 0.2.0 abababa+dirty, torch 2.14.0+cu128", "NVIDIA H100 80GB HBM3 (cuda)"


@pytest.fixture(scope="module")
def mixed(template, tmp_path_factory):
    """The task-difficulty grid again, seed 1 made by another version on a GPU of a cluster (H100)."""
    runs = Sweep(tmp_path_factory.mktemp("mixed"), template)
    for (dataset, seed), (_, _, _, by_gamma) in KNOWN.items():
        runs.add("adam", seed, by_gamma, name=f"dataset={dataset},seed={seed}", dataset=dataset,
                 config={"dataset.name": dataset, "dataset.background": dataset.split("_")[1]},
                 nested=H100 if seed == 1 else {})
    return runs.root


def test_the_collector_and_status_say_what_made_the_runs(known, capsys, monkeypatch):
    from multirun_analysis.provenance import device, version

    monkeypatch.setenv("COLUMNS", "300")
    made = schema_read(next(known.glob("*/results.json"))).provenance  # the template's: trained in this process
    expected = f"made by {version(made)} · {device(made)} · host {made.host}"
    assert made.torch == torch.__version__ and made.device == "cpu"
    assert main([str(known)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == expected and not any(line.startswith("mixed") for line in lines), lines
    assert "version" not in lines[0]  # one version: no column for it
    assert main(["status", str(known)]) == 0
    shown = capsys.readouterr()  # on stderr: its stdout stays a header, a line per run, the counts (for scripts)
    assert shown.out.splitlines()[-1] == "4 completed" and shown.err.splitlines() == [expected]


def test_a_sweep_that_mixes_versions_and_devices_says_so_in_one_line_and_shows_each_runs(mixed, capsys,
                                                                                       monkeypatch):
    from multirun_analysis.provenance import device, version

    monkeypatch.setenv("COLUMNS", "400")
    made = schema_read(next(mixed.glob("*seed=0/results.json"))).provenance
    assert main([str(mixed)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2] == "made by 2 versions · 2 devices · 2 hosts"
    assert lines[-1] == (f"mixed: these runs come from 2 versions ({version(made)}: 2 runs; {H100_VERSION}: 2 runs) "
                         f"and 2 devices ({device(made)}: 2 runs; {H100_DEVICE}: 2 runs): compare like with like "
                         "(split a table with --by version or --by device)")
    header, *rows = lines[1:-2]
    assert header.split()[:4] == ["run", "status", "version", "device"]
    assert sum(H100_VERSION in row and H100_DEVICE in row for row in rows) == 2
    assert main(["status", str(mixed)]) == 0
    assert capsys.readouterr().err.splitlines() == lines[-2:]


def test_a_table_split_by_version_has_each_versions_runs_only(mixed, capsys):
    runs = load_runs([mixed], completed_only=True)
    spec, table = tables.build_split(tables.TABLES["difficulty"], runs, "version")
    made = schema_read(next(mixed.glob("*seed=0/results.json"))).provenance
    from multirun_analysis.provenance import version

    # One seed per version and background: each cell is that run's value (KNOWN), n = 1.
    cells = table[("", "sparsity_gamma", "mean")]
    assert cells.to_dict() == {(version(made), "clean"): 60.0, (version(made), "cluttered"): 20.0,
                               (H100_VERSION, "clean"): 70.0, (H100_VERSION, "cluttered"): 50.0}
    assert table[("", "sparsity_gamma", "n")].eq(1).all() and table[("", "sparsity_gamma", "paper")].tolist() == \
        [70.0, 57.0, 70.0, 57.0]
    assert main(["difficulty", str(mixed)]) == 0  # not split: the table, and on stderr the line saying they mix
    assert capsys.readouterr().err.startswith("mixed: these runs come from 2 versions (")
    assert main(["difficulty", str(mixed), "--by", "device", "--format", "csv"]) == 0
    csv_lines = capsys.readouterr().out.splitlines()
    assert csv_lines[0].startswith("device,background,sparsity_gamma_mean") and len(csv_lines) == 5
    assert main(["difficulty", str(mixed), "--by", "version", "--format", "markdown"]) == 0
    assert f"| {H100_VERSION} | clean | 70.0 (1) |" in capsys.readouterr().out


def test_runs_from_before_provenance_are_left_out_of_what_made_them(template, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")
    runs = Sweep(tmp_path, template)
    runs.add("adam", 0)
    old = runs.add("sgd", 0)
    results = json.loads((old / "results.json").read_text())
    del results["provenance"]
    (old / "results.json").write_text(json.dumps(results))
    assert main([str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith("made by sparsesweep ") and lines[-1].endswith(" · 1 run unrecorded")
    (runs.root / "run1" / "results.json").write_text(json.dumps(results))  # now neither records it
    assert main([str(tmp_path)]) == 0
    assert not any(line.startswith("made by") for line in capsys.readouterr().out.splitlines())


@pytest.mark.slow
def test_plots_are_written_as_png_and_pdf(known, tmp_path):
    code, output = cli("multirun_analysis", "plots", str(known), "--out", str(tmp_path), cwd=tmp_path)
    assert code == 0, output
    for name in ("fig2_bn_C6", "per_layer_sparsity", "selectivity", "sparsity_over_training"):
        for extension in ("png", "pdf"):
            assert (tmp_path / f"{name}.{extension}").stat().st_size > 10_000, name


def test_runs_export_has_every_run_and_metric(known, bad, tmp_path, capsys):
    assert main(["runs", str(known), str(bad), "--out", str(tmp_path / "runs.csv")]) == 0
    import pandas as pd

    frame = pd.read_csv(tmp_path / "runs.csv")
    assert len(frame) == 5 and set(frame.status) == {"completed", "diverged"}
    assert {"sparsity_by_gamma_pct", "sparsity_gamma_C6_pct", "test_error", "run_id"} <= set(frame.columns)


@pytest.mark.slow
def test_table3_shows_pruning_results_of_a_real_vgg16_sweep(tmp_path):
    """A VGG-16 sweep on a Tiny-ImageNet folder at the paper's row (L2 1e-4, batch 20), 2 seeds; a different
    number of gammas is zeroed in each run's final weights, `python -m sparsesweep.prune` prunes the sweep, and
    Table 3's cells are the means of the prune.json and results.json values."""
    make_tiny_imagenet(tmp_path / "data", per_class=8, val_per_class=4)
    code, output = cli("sparsesweep", "-m", *SMOKE, "model=vgg16", "dataset=tinyimagenet",
                       f"dataset.root={tmp_path / 'data'}", "dataset.resolution=16", "batch_size=20",
                       "schedule.iterations_at_batch_size=null", "seed=0,1", f"hydra.sweep.dir={tmp_path}/sweep",
                       cwd=tmp_path)
    assert code == 0, output
    killed = {"seed=0": 3, "seed=1": 6}
    for checkpoint in (tmp_path / "sweep").rglob("checkpoint.pt"):
        state = torch.load(checkpoint, weights_only=True)
        count = next(n for seed, n in killed.items() if seed in str(checkpoint))
        state["model"]["body.0.1.weight"][:count] = 0.0  # conv1_1's BN gamma
        torch.save(state, checkpoint)
    code, output = cli("sparsesweep.prune", str(tmp_path / "sweep"), "--repeats", "2", cwd=tmp_path)
    assert code == 0, output

    pruned = [json.loads(p.read_text()) for p in (tmp_path / "sweep").rglob("prune.json")]
    results = [json.loads(p.read_text()) for p in (tmp_path / "sweep").rglob("results.json")]
    assert sorted(p["features"]["removed"] for p in pruned) == [3, 6]
    table = tables.build(tables.TABLES["table3"], load_runs([tmp_path / "sweep"]))
    row = table.loc[("tinyimagenet", "1e-04", "20")]
    assert row[("", "features_pruned", "mean")] == 4.5 and row[("", "features_pruned", "n")] == 2
    assert row[("", "features_pruned", "paper")] == 3016
    features = pruned[0]["features"]["before"]
    assert row[("", "features_pruned_pct", "mean")] == pytest.approx(100 * 4.5 / features)
    for metric, values in (("pre_top1", [r["test_error"] for r in results]),
                           ("pre_top5", [r["test_top5_error"] for r in results]),
                           ("post_top1", [p["test_error"]["after"] for p in pruned]),
                           ("post_top5", [p["test_top5_error"]["after"] for p in pruned]),
                           ("params_kept_pct", [100 * p["params"]["after"] / p["params"]["before"] for p in pruned]),
                           ("cpu_speedup", [p["latency_ms"]["cpu"]["before"] / p["latency_ms"]["cpu"]["after"]
                                            for p in pruned])):
        assert row[("", metric, "mean")] == pytest.approx(statistics.mean(values)), metric
    assert all(p["test_error"]["before"] == r["test_error"] for p, r in
               zip(sorted(pruned, key=lambda p: p["features"]["removed"]), sorted(results, key=lambda r: r["seed"])))


@pytest.mark.slow
def test_table5_shows_resnet50_sparsity_per_stage_from_a_real_run(tmp_path):
    """Table 5's columns are the per-stage shares of results.json, at the paper's batch-32 row. The run's own
    shares are set by hand to distinct values (after a few steps they may well be equal), so that each column
    can match only its own stage's."""
    code, output = cli("sparsesweep", "-m", *SMOKE, "model=resnet50", "model.width_multiplier=0.0625",
                       "batch_size=32", "seed=0", f"hydra.sweep.dir={tmp_path}/sweep", cwd=tmp_path)
    assert code == 0, output
    results_file = next((tmp_path / "sweep").rglob("results.json"))
    results = json.loads(results_file.read_text())
    by_gamma = results["sparsity"]["by_gamma"]
    shares = {"conv1": 10.0, "res2": 20.0, "res3": 30.0, "res4": 40.0, "res5": 50.0}
    assert set(by_gamma["per_stage_pct"]) == set(shares)
    by_gamma["per_stage_pct"], by_gamma["total_pct"] = shares, 35.0
    results_file.write_text(json.dumps(results))
    table = tables.build(tables.TABLES["table5"], load_runs([tmp_path / "sweep"]))
    row = table.loc["32"]
    assert row[("", "sparsity_res5", "paper")] == 46 and row[("", "sparsity_total", "paper")] == 26
    for stage, share in shares.items():
        assert row[("", f"sparsity_{stage}", "mean")] == share
    assert row[("", "sparsity_total", "mean")] == 35.0
    assert row[("", "top5_error", "mean")] == results["test_top5_error"]
