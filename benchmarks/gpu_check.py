"""The GPU path, taken and proven in one command: correctness checks of the CUDA-graph path, then throughput.

    python benchmarks/gpu_check.py --out gpu_check/          # on a CUDA machine: about 5 minutes on an H100
    python benchmarks/gpu_check.py --out /tmp/x --dry-run    # the same structure on the CPU, tiny: not GPU figures

Writes gpu_check.json (every number) and gpu_check.md (the tables) to --out. Without CUDA and without
--dry-run it prints one line and exits 3; it never writes a figure it did not measure.

Checks (each pass/fail; the exit code is 1 when one fails):
  device      `device=cuda` names the GPU the data lands on (cuda:N)
  graph       a mixed pack (Adam L2, SGD, AdaMax WD) with cuda_graph=on replays a graph for every run and ends with
              the training loss of the same pack trained eagerly (within 5 %)
  self-check  a real graph of a wrong step (its L2 term dropped) is rejected by the self-check, a right one passed
  resume      a captured run's checkpoint resumes eagerly and an eager one captured, each ending with the loss of
              an uninterrupted run (within 5 %)
  layout      channels_last=auto gives a convnet NHWC weights on the GPU
Throughput (BasicNet at batch 40, fp32 with TF32, 32x32 images: CIFAR-10 when it is under dataset.root, else the
embedded renderings of that size; median of 3 timed windows of 2 epochs each, after a first epoch of warm-up
and capture; evaluation and other host work between epochs left out of the windows):
  (a) a plain hand-written loop: per-sample torchvision transforms in a DataLoader, eager steps
  (b) one sparsesweep run in a process of its own, graphs on (channels_last=auto: NHWC), and the same in NCHW
  (c) packs of K = 2, 4, 8, 16 runs in one process, graphs on (mixed Adam / SGD / AdaMax, their own seeds)
  (e) 8 separate processes, each one run as (b), at once
  (d) a sweep's time to its first result: `python -m sparsesweep -m` of 8 short runs (pack_size=auto)
Each row gives steps/s and images/s per run and in aggregate, the peak GPU memory, and the steps each run
took in a CUDA graph replay (`graph_steps` of results.json): a row that claims a graph shows it replayed
one; a row whose graph was refused says why.
Targets: (b) >= 4x (a); the best (c) >= 1,300 aggregate steps/s; (c) at K=8 >= 1.5x (e); (b) in NHWC at
least as fast as in NCHW (what channels_last=auto chooses on a GPU).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from sparsesweep import CONF_DIR  # noqa: E402

OPTIMIZERS = ("adam", "sgd", "adamax")
WINDOWS, EPOCHS_PER_WINDOW = 3, 2
EPOCHS = 1 + WINDOWS * EPOCHS_PER_WINDOW  # the first: warm-up and capture
# (the last: channels_last=auto chooses NHWC for convnets on a GPU, which must not be slower than NCHW)
TARGETS = {"b_over_a": 4.0, "best_pack_steps_per_s": 1300.0, "pack8_over_processes8": 1.5, "nhwc_over_nchw": 1.0}


# ---- the setting --------------------------------------------------------------------------------------------

def sizes(dry_run: bool, data: str) -> dict:
    if dry_run:
        return {"device": "cpu", "width": 0.25, "resolution": 16, "train": 800, "packs": [2], "processes": 2,
                "sweep_runs": 2, "workers": 0, "data": "shapes"}
    return {"device": "cuda", "width": 1.0, "resolution": 32, "train": 20_000, "packs": [2, 4, 8, 16],
            "processes": 8, "sweep_runs": 8, "workers": 4, "data": data}


def cifar10_on_disk() -> bool:
    from sparsesweep.datasets import missing_data

    return not missing_data(compose_config(["dataset=cifar10"]))


def dataset_overrides(size: dict) -> list[str]:
    """CIFAR-10 when it is on disk (and not a dry run), else the embedded renderings at its size."""
    if size["data"] == "cifar10":
        return ["dataset=cifar10", f"dataset.train_limit={size['train']}", "dataset.test_limit=500"]
    return ["dataset=shapes_clean", f"dataset.resolution={size['resolution']}", f"dataset.train_size={size['train']}",
            "dataset.test_size=200", "dataset.augment=true"]


def compose_config(overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def run_overrides(size: dict, seed: int, extra=()) -> list[str]:
    return [*dataset_overrides(size), f"model.width_multiplier={size['width']}", "batch_size=40",
            f"device={size['device']}", f"schedule.base_epochs={EPOCHS}", "schedule.decay_epochs=0",
            f"optimizer={OPTIMIZERS[seed % len(OPTIMIZERS)]}", f"seed={seed}", "progress_interval_s=100000",
            "checkpoint_interval_min=100000", *extra]


# ---- timing ---------------------------------------------------------------------------------------------------

def windows(boundaries: list[tuple[float, int]]) -> list[float]:
    """Steps/s of each window of EPOCHS_PER_WINDOW epochs after the first, from (stepping clock, step) at
    every epoch end."""
    rates = []
    for w in range(WINDOWS):
        (t0, s0), (t1, s1) = boundaries[w * EPOCHS_PER_WINDOW], boundaries[(w + 1) * EPOCHS_PER_WINDOW]
        rates.append((s1 - s0) / (t1 - t0))
    return rates


@contextlib.contextmanager
def epoch_clock():
    """While it is open, records (stepping clock, step) at every epoch end of a pack: wall time less the
    epoch ends' own host work (evaluation, files), measured after the steps' device work is done."""
    from sparsesweep import run

    boundaries, host = [], [0.0]
    real = run.Run.end_epoch_if_due

    def timed(self):
        if not (self.status == run.TRAINING and self.progress.step == self.epoch_end):
            return real(self)
        started = time.perf_counter()
        if not boundaries or boundaries[-1][1] != self.progress.step:
            boundaries.append((started - host[0], self.progress.step))
        try:
            return real(self)
        finally:
            host[0] += time.perf_counter() - started

    run.Run.end_epoch_if_due = timed
    try:
        yield boundaries
    finally:
        run.Run.end_epoch_if_due = real


def peak_memory_mb(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None


# ---- rows, each in a process of its own (`--row KIND K`) ---------------------------------------------------------

def pack_row(size: dict, k: int, extra=()) -> dict:
    """(b), (c): a pack of k runs in this process."""
    from sparsesweep import pack

    reasons = []

    class Refusals(logging.Handler):
        def emit(self, record):
            if "not captured in a CUDA graph" in record.getMessage():
                reasons.append(record.getMessage().split("not captured in a CUDA graph: ", 1)[1])

    logging.getLogger("sparsesweep").addHandler(Refusals())
    logging.getLogger("sparsesweep").setLevel(logging.DEBUG)  # a CPU run's reason is logged at DEBUG
    with tempfile.TemporaryDirectory() as out, epoch_clock() as boundaries:
        specs = [pack.RunSpec(compose_config(run_overrides(size, seed, extra)), Path(out) / str(seed))
                 for seed in range(k)]
        outcomes = pack.train_runs(specs)
    errors = [repr(error) for _, error in outcomes if error is not None]
    if errors:
        return {"error": errors[0]}
    per_run = statistics.median(windows(boundaries))
    results = [results for results, _ in outcomes]
    return {"runs": k, "per_run_steps_per_s": per_run, "aggregate_steps_per_s": per_run * k,
            "window_steps_per_s": windows(boundaries), "peak_memory_mb": peak_memory_mb(size["device"]),
            "graph_steps": [r["graph_steps"] for r in results], "iterations": [r["iterations"] for r in results],
            "not_captured": sorted(set(reasons))}


def plain_row(size: dict) -> dict:
    """(a): the way most training scripts are written: per-sample transforms in DataLoader workers, eager steps."""
    from sparsesweep._torchvision import import_torchvision
    from sparsesweep.datasets import load_dataset
    from sparsesweep.models import build_model

    transforms = import_torchvision().transforms
    cfg = compose_config(run_overrides(size, 0))
    device = torch.device(size["device"])
    data = load_dataset(cfg.dataset)
    images, labels = data.train.images, data.train.labels
    mean, std = (data.mean / 255).tolist(), (data.std / 255).tolist()
    augment = transforms.Compose([transforms.RandomCrop(images.shape[-1], padding=4), transforms.RandomHorizontalFlip(),
                                  transforms.ConvertImageDtype(torch.float32), transforms.Normalize(mean, std)])

    class Augmented(torch.utils.data.Dataset):
        def __len__(self):
            return len(labels)

        def __getitem__(self, i):
            return augment(images[i]), labels[i]

    loader = torch.utils.data.DataLoader(Augmented(), batch_size=40, shuffle=True, drop_last=True,
                                         num_workers=size["workers"], pin_memory=device.type == "cuda",
                                         persistent_workers=size["workers"] > 0)
    torch.manual_seed(0)
    model = build_model(cfg.model, data.channels, data.num_classes).to(device)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3, betas=(0.9, 0.99), weight_decay=1e-4)
    boundaries, step = [], 0
    for _ in range(EPOCHS):
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        boundaries.append((time.perf_counter(), step))
    per_run = statistics.median(windows(boundaries))
    return {"runs": 1, "per_run_steps_per_s": per_run, "aggregate_steps_per_s": per_run,
            "window_steps_per_s": windows(boundaries), "peak_memory_mb": peak_memory_mb(size["device"]),
            "graph_steps": [0], "iterations": [step], "not_captured": ["a plain eager loop"]}


def row_in_process(args, kind: str, k: int = 1, extra=()) -> dict:
    """One row, run as `--row KIND K [OVERRIDE...]` in a child process (clean GPU memory, its own peak)."""
    command = [sys.executable, __file__, "--out", str(args.out), "--row", kind, str(k), *extra, "--data", args.data] + \
        (["--dry-run"] if args.dry_run else [])
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    lines = done.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, ValueError):
        return {"error": (done.stderr.strip().splitlines() or ["no output"])[-1]}


def processes_row(args, n: int) -> dict:
    """(e): n processes, each one run as (b), all at once."""
    command = [sys.executable, __file__, "--out", str(args.out), "--row", "pack", "1", "--data", args.data] + \
        (["--dry-run"] if args.dry_run else [])
    # the cores shared out, as the local launcher does: n processes of all-core thread pools thrash a CPU
    threads = str(max(1, (os.cpu_count() or 1) // n))
    children = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                 env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": threads})
                for _ in range(n)]
    rows = []
    for child in children:
        out = child.communicate()[0].strip().splitlines()
        rows.append(json.loads(out[-1]) if out else {"error": "no output"})
    if any("error" in row for row in rows):
        return next(row for row in rows if "error" in row)
    rates = [row["per_run_steps_per_s"] for row in rows]
    memory = [row["peak_memory_mb"] for row in rows]
    return {"runs": n, "per_run_steps_per_s": statistics.median(rates), "aggregate_steps_per_s": sum(rates),
            "peak_memory_mb": None if None in memory else sum(memory),
            "graph_steps": [g for row in rows for g in row["graph_steps"]],
            "iterations": [i for row in rows for i in row["iterations"]],
            "not_captured": sorted({r for row in rows for r in row["not_captured"]})}


def sweep_row(args, size: dict) -> dict:
    """(d): a real sweep through the command line; seconds until its first completed result, and in all."""
    with tempfile.TemporaryDirectory() as out:
        seeds = ",".join(str(s) for s in range(size["sweep_runs"]))
        overrides = [o for o in run_overrides(size, 0) if not o.startswith(("seed=", "schedule.base_epochs"))]
        command = [sys.executable, "-m", "sparsesweep", "-m", f"seed={seeds}", *overrides, "schedule.base_epochs=2",
                   f"hydra.sweep.dir={out}", "hydra.sweep.subdir=seed${seed}"]
        started = time.perf_counter()
        sweep = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 env={**os.environ, "PYTHONPATH": str(ROOT)})
        first = None
        while sweep.poll() is None or first is None:
            if first is None and any(json.loads(p.read_text()).get("status") == "completed"
                                     for p in Path(out).glob("*/results.json")):
                first = time.perf_counter() - started
            if sweep.poll() is not None and first is None:
                break
            time.sleep(0.1)
        total = time.perf_counter() - started
        results = [json.loads(p.read_text()) for p in Path(out).glob("*/results.json")]
    return {"runs": size["sweep_runs"], "first_result_s": first, "total_s": total, "exit_code": sweep.returncode,
            "completed": sum(r.get("status") == "completed" for r in results),
            "graph_steps": [r.get("graph_steps", 0) for r in results]}


# ---- checks ---------------------------------------------------------------------------------------------------------

def check_device(size: dict) -> tuple[bool, str]:
    from sparsesweep.assemble import pick_device

    if size["device"] == "cpu":
        return pick_device("cpu") == torch.zeros(1).device, "cpu (no GPU: the cuda naming is tested on the CPU)"
    device = pick_device("cuda")
    placed = torch.zeros(1, device="cuda").device
    return device == placed, f"device=cuda -> {device}; a tensor placed on cuda -> {placed}"


def train_pack(size: dict, out: Path, extra: list[str], seeds=(0, 1, 2), epochs: int = 2) -> list[dict]:
    from sparsesweep import pack

    specs = [pack.RunSpec(compose_config(run_overrides(size, seed, [f"schedule.base_epochs={epochs}", *extra])),
                          out / str(seed)) for seed in seeds]
    outcomes = pack.train_runs(specs)
    errors = [error for _, error in outcomes if error is not None]
    if errors:
        raise errors[0]
    return [results for results, _ in outcomes]


def losses_agree(a: list[dict], b: list[dict]) -> bool:
    return all(abs(x["train_loss"] - y["train_loss"]) < 0.05 * abs(y["train_loss"]) for x, y in zip(a, b))


def check_graph(size: dict, out: Path) -> tuple[bool, str]:
    mixed = ["regularizer.l2=1e-4"]
    graph = train_pack(size, out / "graph", ["performance.cuda_graph=on" if size["device"] != "cpu" else
                                             "performance.cuda_graph=auto", *mixed])
    eager = train_pack(size, out / "eager", ["performance.cuda_graph=off", *mixed])
    replayed = [r["graph_steps"] for r in graph]
    ok = losses_agree(graph, eager) and (size["device"] == "cpu" or all(replayed))
    return ok, (f"graph steps {replayed}; train loss graph {[round(r['train_loss'], 4) for r in graph]} vs eager "
                f"{[round(r['train_loss'], 4) for r in eager]}")


def check_self_check(size: dict, out: Path) -> tuple[bool, str]:
    """A real capture of a wrong step (L2 dropped) against the self-check, and of the right one."""
    from sparsesweep import graphs, pack
    from sparsesweep.rundir import open_directory

    if size["device"] == "cpu":
        return True, "skipped (no GPU: tests/test_graphs.py checks the self-check with stand-in graphs)"
    with contextlib.ExitStack() as resources:
        runs, datasets = [], {}
        for seed in (0, 1):
            spec = pack.RunSpec(compose_config(run_overrides(size, seed, ["regularizer.l2=1e-4"])), out / str(seed))
            run_id, _ = open_directory(spec.cfg, spec.out_dir, [], None, resources)
            runs.append(pack.open_run(spec, run_id, resources, datasets, first=not runs))
        shared = graphs.GraphResources(runs[0].device)
        with shared.on_side_stream():
            for _ in range(graphs.WARMUP_STEPS):
                graphs.EagerStep(runs)()
        right = graphs.GraphStep(runs, shared)
        accepted = graphs.self_check(runs, right)
        right.release()
        groups = [g for run in runs for g in run.optimizer.param_groups]
        saved = [g["l2"] for g in groups]
        for group in groups:
            group["l2"] = 0.0
        wrong = graphs.GraphStep(runs, shared)  # captured without the L2 term
        for group, l2 in zip(groups, saved):
            group["l2"] = l2
        rejected = graphs.self_check(runs, wrong)
        wrong.release()
    return accepted == [] and len(rejected) == 2, f"right graph: {accepted or 'accepted'}; wrong graph: " \
                                                   f"{rejected[0] if rejected else 'ACCEPTED'}"


def check_resume(size: dict, out: Path) -> tuple[bool, str]:
    """A run stopped at a checkpoint, resumed with the other setting of cuda_graph, both ways."""
    from sparsesweep import pack

    class Stop(Exception):
        pass

    straight = train_pack(size, out / "straight", [], seeds=(0,), epochs=3)
    details, ok = [], True
    settings = ("on", "off") if size["device"] != "cpu" else ("auto", "off")
    for first, then in (settings, settings[::-1]):
        real, saves = pack.Run.save, []

        def stop_after_first_save(run, real=real, saves=saves):
            real(run)
            saves.append(None)
            if len(saves) == 1:
                raise Stop

        where = out / f"{first}-then-{then}"
        pack.Run.save = stop_after_first_save
        try:
            train_pack(size, where, [f"performance.cuda_graph={first}", "checkpoint_interval_min=0"], seeds=(0,),
                       epochs=3)
        except Stop:
            pass
        finally:
            pack.Run.save = real
        resumed = train_pack(size, where, [f"performance.cuda_graph={then}"], seeds=(0,), epochs=3)
        ok &= losses_agree(resumed, straight) and resumed[0]["iterations"] == straight[0]["iterations"]
        details.append(f"{first} -> {then}: loss {resumed[0]['train_loss']:.4f} (uninterrupted "
                       f"{straight[0]['train_loss']:.4f}), graph steps {resumed[0]['graph_steps']}")
    return ok, "; ".join(details)


def check_layout(size: dict) -> tuple[bool, str]:
    from sparsesweep import assemble
    from sparsesweep.datasets import load_dataset

    cfg = compose_config(run_overrides(size, 0))
    device = assemble.pick_device(cfg.device)
    model = assemble.model_for(cfg, load_dataset(cfg.dataset), device)
    weight = next(m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1)
    nhwc = not weight.is_contiguous() and weight.is_contiguous(memory_format=torch.channels_last)
    expected = device.type == "cuda"
    return nhwc == expected, f"a conv weight {'NHWC' if nhwc else 'NCHW'} on {device}"


# ---- the report ----------------------------------------------------------------------------------------------------

def markdown(report: dict) -> str:
    lines = [f"# gpu_check: {report['device']}", ""]
    if report["dry_run"]:
        lines += ["**DRY RUN on the CPU, tiny sizes: these are not GPU figures.**", ""]
    lines += [f"torch {report['torch']}, {report['setting']}", "", "## Checks", "", "| check | result | detail |",
              "|---|---|---|"]
    lines += [f"| {name} | {'pass' if ok else 'FAIL'} | {detail} |" for name, (ok, detail) in report["checks"].items()]
    lines += ["", "## Throughput", "",
              "| row | runs | steps/s per run | steps/s aggregate | images/s aggregate | peak GPU MB | graph "
              "| windows |",
              "|---|---|---|---|---|---|---|---|"]
    for name, row in report["rows"].items():
        if "error" in row:
            lines.append(f"| {name} | | | | | | error: {row['error']} | |")
            continue
        graph = (f"replayed ({min(row['graph_steps'])}-{max(row['graph_steps'])} steps/run)"
                 if all(row["graph_steps"]) else f"none: {'; '.join(row['not_captured']) or 'not captured'}")
        memory = "–" if row["peak_memory_mb"] is None else f"{row['peak_memory_mb']:.0f}"
        spread = ", ".join(f"{w:.1f}" for w in row["window_steps_per_s"]) if "window_steps_per_s" in row else \
            "(each process's median)"
        lines.append(f"| {name} | {row['runs']} | {row['per_run_steps_per_s']:.1f} | "
                     f"{row['aggregate_steps_per_s']:.1f} | "
                     f"{40 * row['aggregate_steps_per_s']:.0f} | {memory} | {graph} | {spread} |")
    sweep = report["sweep"]
    first = "–" if sweep.get("first_result_s") is None else f"{sweep['first_result_s']:.1f} s"
    lines += ["", f"(d) a sweep of {sweep.get('runs')} runs: first result after {first}, all "
                  f"{sweep.get('completed')} completed after {sweep.get('total_s', 0):.1f} s (exit code "
                  f"{sweep.get('exit_code')}); graph steps {sweep.get('graph_steps')}", "", "## Targets", ""]
    for name, (value, target, verdict) in report["targets"].items():
        shown = "–" if value is None else f"{value:.2f}"
        lines.append(f"- {name}: {shown} (target {target:g}): {verdict}")
    return "\n".join(lines) + "\n"


def targets(rows: dict, dry_run: bool) -> dict:
    def rate(name):
        row = rows.get(name, {})
        return row.get("aggregate_steps_per_s")

    packs = {name: rate(name) for name in rows if name.startswith("(c)") and rate(name)}
    values = {"b_over_a": rate("(b) one run") / rate("(a) plain loop") if rate("(b) one run") and rate("(a) plain loop")
              else None,
              "best_pack_steps_per_s": max(packs.values()) if packs else None,
              "pack8_over_processes8": rate("(c) pack of 8") / rate("(e) 8 processes")
              if rate("(c) pack of 8") and rate("(e) 8 processes") else None,
              "nhwc_over_nchw": rate("(b) one run") / rate("(b) one run, NCHW")
              if rate("(b) one run") and rate("(b) one run, NCHW") else None}
    verdict = {}
    for name, value in values.items():
        judged = "not judged (dry run)" if dry_run else "not measured" if value is None else \
            "met" if value >= TARGETS[name] else "MISSED"
        verdict[name] = (value, TARGETS[name], judged)
    return verdict


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--dry-run", action="store_true", help="the structure on the CPU, tiny (no GPU figures)")
    parser.add_argument("--row", nargs="+", help=argparse.SUPPRESS)  # KIND K [OVERRIDE ...]
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False): run it on a GPU machine, or add "
              "--dry-run to check its structure on the CPU", file=sys.stderr)
        return 3
    args.data = args.data or ("cifar10" if not args.dry_run and cifar10_on_disk() else "shapes")
    size = sizes(args.dry_run, args.data)
    if args.row:
        logging.basicConfig(level=logging.WARNING)
        kind, k, extra = args.row[0], int(args.row[1]), args.row[2:]
        print(json.dumps(plain_row(size) if kind == "plain" else pack_row(size, k, extra)))
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name() if not args.dry_run else f"CPU ({os.cpu_count()} cores)"
    report = {"device": device, "dry_run": args.dry_run, "torch": torch.__version__,
              "setting": f"BasicNet x{size['width']}, {size['resolution']}x{size['resolution']}, batch 40, "
                         f"{' '.join(dataset_overrides(size)[:1])}, {size['train']} training images, {EPOCHS} "
                         f"epochs per row",
              "checks": {}, "rows": {}}
    print(f"gpu_check on {device}{' (dry run)' if args.dry_run else ''}", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        for name, check in (("device", lambda: check_device(size)),
                            ("graph", lambda: check_graph(size, Path(scratch) / "g")),
                            ("self-check", lambda: check_self_check(size, Path(scratch) / "s")),
                            ("resume", lambda: check_resume(size, Path(scratch) / "r")),
                            ("layout", lambda: check_layout(size))):
            try:
                report["checks"][name] = check()
            except Exception as error:  # noqa: BLE001 (a check that crashes fails, saying why)
                report["checks"][name] = (False, f"{type(error).__name__}: {error}")
            print(f"check {name}: {'pass' if report['checks'][name][0] else 'FAIL'}: {report['checks'][name][1]}",
                  flush=True)
    rows = report["rows"]
    rows["(a) plain loop"] = row_in_process(args, "plain")
    rows["(b) one run"] = row_in_process(args, "pack", 1)
    # channels_last=auto is NHWC for a convnet on a GPU: this row is the same run in NCHW
    rows["(b) one run, NCHW"] = row_in_process(args, "pack", 1, ["performance.channels_last=false"])
    for k in size["packs"]:
        rows[f"(c) pack of {k}"] = row_in_process(args, "pack", k)
    rows[f"(e) {size['processes']} processes"] = processes_row(args, size["processes"])
    for name, row in rows.items():
        print(f"{name}: {row.get('aggregate_steps_per_s', row.get('error'))}", flush=True)
    report["sweep"] = sweep_row(args, size)
    report["targets"] = targets(rows, args.dry_run)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "gpu_check.md").write_text(markdown(report))
    print(markdown(report))
    return 0 if all(ok for ok, _ in report["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
