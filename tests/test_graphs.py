"""The GPU path's separable pieces, on the CPU: device identity, what may be captured and who pays for it, the
step's addresses, the capture itself on a stand-in of torch.cuda (the runs' GPU current, one stream per run,
a failed capture's cause), the self-check (every tensor, a tolerance derived from two eager executions and
from the regularizer's own effect, never past an epoch's end), the pack's one probe and what it decides
(graphs stand in for CUDA graphs here: the real capture is benchmarks/gpu_check.py's), checkpoints that move
between captured and eager runs, channels_last=auto."""
import contextlib
import logging
from types import SimpleNamespace

import pytest
import torch

from conftest import SMOKE, compose_config, run_state
from sparsesweep import assemble, graphs, optim, pack, rundir
from sparsesweep.errors import ConfigError
from sparsesweep.rundir import open_directory

ONE_THREAD = [*SMOKE, "dataset.augment=true", "threads=1"]
RUNS = {"adam-l2": ["optimizer=adam", "regularizer.l2=1e-4"],  # the paper's base coefficient
        "sgd-l2": ["optimizer=sgd", "regularizer.l2=1e-4"],
        "adamax-wd": ["optimizer=adamax", "regularizer=wd", "regularizer.wd=1e-2"]}
# The smallest coefficients of the paper's grids.
SMALL = {"adam-l2-1e-6": ["optimizer=adam", "regularizer.l2=1e-6"],
         "sgd-l2-1e-6": ["optimizer=sgd", "regularizer.l2=1e-6"],
         "adam-wd-1e-6": ["optimizer=adam", "regularizer=wd", "regularizer.wd=1e-6"],
         "adamax-wd-1e-6": ["optimizer=adamax", "regularizer=wd", "regularizer.wd=1e-6"]}


@contextlib.contextmanager
def opened_runs(tmp_path, names, extra=()):
    """Runs opened as a pack opens them, ready to step."""
    with contextlib.ExitStack() as resources:
        runs, datasets = [], {}
        for name in names:
            spec = pack.RunSpec(compose_config(ONE_THREAD + {**RUNS, **SMALL}[name] + list(extra)), tmp_path / name)
            run_id, _ = open_directory(spec.cfg, spec.out_dir, [], None, resources)
            runs.append(pack.open_run(spec, run_id, resources, datasets, first=not runs))
        yield runs


def steps(runs, count):
    step = graphs.EagerStep(runs)
    for _ in range(count):
        step()
    for run in runs:
        run.count_steps(count)


# ---- device identity ---------------------------------------------------------------------------------------

@pytest.fixture
def two_gpus(monkeypatch):
    """PyTorch believes it sees two GPUs, the current one cuda:1."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)


@pytest.mark.parametrize("name, device", [("auto", "cuda:1"), ("cuda", "cuda:1"), ("cuda:0", "cuda:0"),
                                          ("cuda:1", "cuda:1"), ("cpu", "cpu")])
def test_a_gpu_is_always_named_by_its_index(two_gpus, name, device):
    # A tensor placed on `cuda` reports `cuda:N`, which torch.device("cuda") does not equal.
    assert assemble.pick_device(name) == torch.device(device) and str(assemble.pick_device(name)) == device


def test_a_gpu_index_beyond_the_visible_ones_is_one_line(two_gpus):
    with pytest.raises(ConfigError, match=r"^device=cuda:2 but PyTorch sees 2 GPU\(s\), cuda:0 to cuda:1: use"):
        assemble.pick_device("cuda:2")


def test_without_a_gpu_auto_is_the_cpu_and_cuda_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert assemble.pick_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="^device=cuda but PyTorch sees no CUDA GPU"):
        assemble.pick_device("cuda")


# ---- what may be captured, known before anything runs ------------------------------------------------------

@pytest.mark.parametrize("overrides, reason", [
    ([], None), (["optimizer=sgd"], None), (["optimizer=adamax"], None), (["optimizer=rmsprop"], None),
    (["optimizer=adafactor"], "torch.optim.Adafactor's step keeps state on the host"),
    (["optimizer=adagrad"], "torch.optim.Adagrad's step keeps state on the host"),
    (["performance.compile=true"], "performance.compile=true"),
    (["performance.cuda_graph=off"], "performance.cuda_graph=off"),
    (["dataset=imagenet"], "its images are read by DataLoader workers"), (["device=cpu"], "device=cpu"),
    (["performance.data_on_device=false"], "performance.data_on_device=false")])
def test_what_cannot_be_captured_is_known_from_the_config(overrides, reason):
    found = graphs.why_not_capturable_config(compose_config(overrides))
    assert found == reason if reason is None else found.startswith(reason)


def pretend_cuda_run(overrides=(), model=None, on_device=True, steps_per_epoch=20):
    """What graphs.why_not_capturable reads of a run, as a run on a GPU would have it."""
    return SimpleNamespace(cfg=compose_config(["device=cuda", *overrides]), device=torch.device("cuda", 0),
                           model=model or torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()),
                           feed=SimpleNamespace(capturable=on_device, steps=steps_per_epoch))


@pytest.mark.parametrize("run, reason", [
    (pretend_cuda_run(), None),
    (pretend_cuda_run(["performance.cuda_graph=off"]), "performance.cuda_graph=off"),
    (pretend_cuda_run(["optimizer=adagrad"]), "torch.optim.Adagrad's step keeps state on the host"),
    (pretend_cuda_run(on_device=False), "its images are not on the GPU"),
    (pretend_cuda_run(model=torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout())),
     "its forward draws random numbers"),
    (pretend_cuda_run(steps_per_epoch=2), "its epoch of 2 step(s) is shorter than the graph's self-check (3 steps")],
    ids=["capturable", "off", "adagrad", "data-on-host", "dropout", "short-epoch"])
def test_what_cannot_be_captured_is_known_before_the_optimizer_is_built(run, reason):
    found = graphs.why_not_capturable(run)
    assert found == reason if reason is None else found.startswith(reason)


def test_only_a_run_that_may_be_captured_pays_for_it(tmp_path, monkeypatch):
    # A capture needs the gradients at fixed addresses (zeroed, not dropped) and the step counts on the device.
    def gradients_kept(run) -> bool:
        steps([run], 1)
        first = [p.grad for p in run.model.parameters()]
        steps([run], 1)
        return all(p.grad is grad for p, grad in zip(run.model.parameters(), first))

    with opened_runs(tmp_path / "cpu", ["sgd-l2"]) as (run,):
        assert graphs.why_not_capturable(run) == graphs.ON_CPU and not run.capturable and not gradients_kept(run)
    monkeypatch.setattr(graphs, "why_not_capturable", lambda run: None)
    with opened_runs(tmp_path / "captured", ["sgd-l2"]) as (run,):
        assert run.capturable and gradients_kept(run)
        run.train_eagerly()  # its pack's probe refused it: from now on it steps as any eager run
        assert not run.capturable and not gradients_kept(run)


def test_a_capturable_optimizer_stops_being_one():
    cfg = compose_config([*SMOKE, "optimizer=adam"])
    model = torch.nn.Linear(3, 2)
    optimizer = optim.build_optimizer(cfg.optimizer, cfg.regularizer, model, capturable=True)
    model(torch.ones(1, 3)).sum().backward()
    with pytest.raises(AssertionError, match="^If capturable=True"):  # torch's capturable step wants a GPU
        optimizer.step()
    optim.stop_capturable(optimizer)
    optimizer.step()
    assert not any(group["capturable"] for group in optimizer.param_groups)
    assert all(state["step"].device == torch.device("cpu") for state in optimizer.state.values())


# ---- the step's addresses ------------------------------------------------------------------------------------

def step_tensors(run) -> dict[str, torch.Tensor]:
    """Every tensor a captured step reads or writes: parameters, gradients, buffers, optimizer state, the feed's
    images, labels, draws and position, the epoch's sums, the WD factors."""
    tensors = {f"model.{k}": v for k, v in run.model.state_dict(keep_vars=True).items()}
    tensors.update({f"grad.{k}": p.grad for k, p in run.model.named_parameters()})
    for number, param in enumerate(p for group in run.optimizer.param_groups for p in group["params"]):
        tensors.update({f"optimizer.{number}.{k}": v for k, v in run.optimizer.state[param].items()
                        if torch.is_tensor(v)})
    feed = run.feed
    tensors.update({"images": feed.split.images, "labels": feed.split.labels, "order": feed.order,
                    "offsets": feed.offsets, "flips": feed.flips, "position": feed.position,
                    "loss_sum": run.tally.loss_sum, "wrong": run.tally.wrong})
    tensors.update({f"decay.{n}": factor for n, factor in enumerate(run.decay.factors)})
    return tensors


def addresses(run) -> dict[str, int]:
    return {name: tensor.data_ptr() for name, tensor in step_tensors(run).items()}


def test_every_tensor_the_step_reads_or_writes_keeps_its_address(tmp_path, monkeypatch):
    # A graph replays on the addresses it was captured on: nothing between two replays may move a tensor.
    monkeypatch.setattr(graphs, "why_not_capturable", lambda run: None)  # gradients kept, as a captured run's
    with opened_runs(tmp_path, ["adamax-wd"], ["checkpoint_interval_min=0"]) as (run,):
        steps([run], 1)  # the gradients and the optimizer's state exist from the first step on
        before = addresses(run)
        assert len(before) > 30 and None not in step_tensors(run).values()
        steps([run], 5)
        run.check_progress()  # a progress line: the sums read back to the host
        run.save()  # a checkpoint within the epoch
        steps([run], run.epoch_end - run.progress.step)
        run.end_epoch_if_due()  # evaluation, the BN snapshot, the history rewrite, the next epoch's draws
        assert run.progress.epoch == 1 and addresses(run) == before
        lr = run.optimizer.param_groups[0]["lr"]
        steps([run], run.plan.decay_step - run.progress.step)  # an LR change (and its WD factor)
        assert run.optimizer.param_groups[0]["lr"] != lr
        run.end_epoch_if_due()
        assert run.progress.epoch == 2 and addresses(run) == before


# ---- the capture, on a stand-in of torch.cuda ------------------------------------------------------------------

class FakeCuda:
    """torch.cuda's devices, streams and graphs as far as the capture uses them, without a GPU: which device and
    which stream are current, how many streams were made, where each capture began."""

    def __init__(self, monkeypatch, devices=2, current=0):
        fake = self
        self.device_index, self.streams_made, self.captures, self.ended = current, 0, [], 0

        class Stream:
            def __init__(self, device=None):
                fake.streams_made += 1
                self.device = torch.device("cuda", fake.device_index if device is None else torch.device(device).index)

            def wait_stream(self, other):
                pass

        class CUDAGraph:
            end_error = None  # what capture_end raises, as it does once the step broke the capture

            def capture_begin(self, pool=None, capture_error_mode="global"):
                fake.captures.append((fake.device_index, fake.current_stream()))

            def capture_end(self):
                fake.ended += 1
                if self.end_error:
                    raise self.end_error

            def reset(self):
                pass

        @contextlib.contextmanager
        def device(where):
            saved, fake.device_index = fake.device_index, torch.device(where).index
            try:
                yield
            finally:
                fake.device_index = saved

        @contextlib.contextmanager
        def stream(chosen):  # as torch.cuda.StreamContext: the stream's device is current within it too
            saved_device, fake.device_index = fake.device_index, chosen.device.index
            saved, self.current[chosen.device.index] = self.current[chosen.device.index], chosen
            try:
                yield
            finally:
                self.current[chosen.device.index], fake.device_index = saved, saved_device

        self.Stream, self.CUDAGraph = Stream, CUDAGraph
        self.default = [Stream(device=f"cuda:{n}") for n in range(devices)]
        self.current, self.streams_made = list(self.default), 0
        for name, value in {"is_available": lambda: True, "device_count": lambda: devices,
                            "current_device": lambda: self.device_index, "Stream": Stream, "CUDAGraph": CUDAGraph,
                            "device": device, "stream": stream, "current_stream": self.current_stream,
                            "synchronize": lambda device=None: None, "empty_cache": lambda: None,
                            "graph_pool_handle": object}.items():
            monkeypatch.setattr(torch.cuda, name, value)

    def current_stream(self, device=None):
        return self.current[self.device_index if device is None else torch.device(device).index]


def test_a_run_on_the_second_gpu_is_captured_with_that_gpu_current(tmp_path, monkeypatch):
    fake = FakeCuda(monkeypatch, devices=2, current=0)
    second = torch.device("cuda", 1)
    with opened_runs(tmp_path, ["adam-l2", "sgd-l2"]) as runs:
        resources = graphs.GraphResources(second)
        graphs.GraphStep(runs, resources)
    assert fake.captures == [(1, resources.capture)] and resources.capture.device == second
    assert {stream.device for stream in [resources.side, *resources.streams.values()]} == {second}
    assert fake.device_index == 0 and fake.current_stream() is fake.default[0]  # as it was


def test_a_failed_capture_reports_the_error_that_broke_it_and_leaves_the_default_stream_current(tmp_path,
                                                                                                monkeypatch):
    fake = FakeCuda(monkeypatch, devices=1)
    fake.CUDAGraph.end_error = RuntimeError("CUDA error: operation failed due to a previous error during capture")
    with opened_runs(tmp_path, ["adam-l2", "sgd-l2"]) as runs:
        def breaks_the_capture():
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing\nmore lines")
        monkeypatch.setattr(runs[1], "train_step", breaks_the_capture)
        graph, reason = graphs.capture(runs, graphs.GraphResources(torch.device("cuda", 0)))
    assert graph is None and reason == "RuntimeError: CUDA error: operation not permitted when stream is capturing"
    assert fake.current_stream() is fake.default[0] and len(fake.captures) == fake.ended == 1  # ended, not left open


def test_a_pack_makes_one_stream_per_run_for_all_its_captures(tmp_path, monkeypatch):
    fake = FakeCuda(monkeypatch, devices=1)
    with opened_runs(tmp_path, ["adam-l2", "sgd-l2"]) as runs:
        resources = graphs.GraphResources(torch.device("cuda", 0))
        for _ in range(3):  # the probe, then captures again at an LR change and when a run leaves
            graphs.GraphStep(runs, resources).release()
    assert fake.streams_made == len(runs) + 2  # and the side stream, and the capture stream
    assert len(fake.captures) == 3 and len({stream for _, stream in fake.captures}) == 1


# ---- the self-check ------------------------------------------------------------------------------------------

def test_a_disagreement_is_measured_against_two_eager_executions_and_the_change():
    start, eager = torch.zeros(4, dtype=torch.float64), torch.full((4,), 0.5, dtype=torch.float64)  # change: norm 1
    off = torch.tensor([0.5, 0.5, 0.5, 0.5 + 2e-3], dtype=torch.float64)
    assert graphs.disagreement(start, eager, eager, eager) is None
    assert graphs.disagreement(start, eager, eager, off) == pytest.approx((2e-3, graphs.UPDATE_FLOOR))
    # Two eager executions that differ by 1e-3: 10x that is allowed.
    noisy = torch.tensor([0.5, 0.5, 0.5, 0.5 + 1e-3], dtype=torch.float64)
    assert graphs.disagreement(start, eager, noisy, off) is None
    assert graphs.disagreement(start, eager, noisy, torch.tensor([0.5, 0.5, 0.5, 0.52], dtype=torch.float64)) == \
        pytest.approx((0.02, 0.01))
    assert graphs.disagreement(start, eager, eager, torch.full((4,), float("nan"))) is not None
    unchanged = torch.ones(3)  # a tensor the step leaves alone must stay alone
    assert graphs.disagreement(unchanged, unchanged, unchanged, unchanged + 1e-6) == (float("inf"), 0.0)
    counts = torch.tensor([7])  # integers (positions, counts) agree exactly
    assert graphs.disagreement(counts - 3, counts, counts, counts + 1) == (float("inf"), 0.0)


def without_l2(runs):
    """A wrong graph: the runs' steps without their L2 term."""
    def step():
        groups = [g for run in runs for g in run.optimizer.param_groups]
        saved = [g["l2"] for g in groups]
        for group in groups:
            group["l2"] = 0.0
        graphs.EagerStep(runs)()
        for group, l2 in zip(groups, saved):
            group["l2"] = l2
        return True
    return step


def without_bn_update(runs):
    """A wrong graph: one BN layer's running mean is not updated."""
    def step():
        bns = [next(m for m in run.model.modules() if isinstance(m, torch.nn.BatchNorm2d)) for run in runs]
        means = [bn.running_mean.clone() for bn in bns]
        graphs.EagerStep(runs)()
        for bn, mean in zip(bns, means):
            bn.running_mean.copy_(mean)
        return True
    return step


def without_optimizer_state_update(runs):
    """A wrong graph: the last parameter's optimizer state keeps its value (a momentum buffer, Adam's moments)."""
    def step():
        states = [run.optimizer.state[run.optimizer.param_groups[0]["params"][-1]] for run in runs]
        saved = [{k: v.clone() for k, v in state.items() if torch.is_tensor(v) and k != "step"} for state in states]
        graphs.EagerStep(runs)()
        for state, values in zip(states, saved):
            for key, value in values.items():
                state[key].copy_(value)
        return True
    return step


def skips_a_batch(runs):
    def step():
        for run in runs:
            run.feed.position += 1
        return graphs.EagerStep(runs)()
    return step


@pytest.mark.parametrize("wrong", [without_l2, without_bn_update, without_optimizer_state_update, skips_a_batch])
def test_the_self_check_accepts_a_right_step_rejects_a_wrong_one_and_restores_the_state(tmp_path, wrong):
    with opened_runs(tmp_path, ["adam-l2", "sgd-l2"]) as runs:
        steps(runs, graphs.WARMUP_STEPS)
        before = graphs.snapshot(runs)
        assert graphs.self_check(runs, graphs.EagerStep(runs)) == []
        problems = graphs.self_check(runs, wrong(runs))
        assert len(problems) == 2 and all("replayed steps differ from eager ones in" in str(p) for p in problems)
        after = graphs.snapshot(runs)
        assert all(torch.equal(a[k], b[k]) for a, b in zip(before, after) for k in a)  # put back, bitwise


def without_regularization(runs):
    """A wrong graph: the runs' steps without their regularization (L2, WD), as a capture that lost it would be."""
    def step():
        with contextlib.ExitStack() as plain:
            for run in runs:
                plain.enter_context(optim.unregularized(run.optimizer, run.decay))
            return graphs.EagerStep(runs)()
    return step


@pytest.mark.parametrize("name", SMALL)
def test_the_self_check_rejects_a_dropped_regularizer_of_1e_6_by_a_clear_margin(tmp_path, name):
    # Dropping an L2 or WD of 1e-6 moves many tensors by less than UPDATE_FLOOR of their change over the checked
    # steps; where the regularizer moves a tensor at all, its own effect sets the allowance.
    with opened_runs(tmp_path, [name]) as runs:
        steps(runs, graphs.WARMUP_STEPS)
        assert graphs.self_check(runs, graphs.EagerStep(runs)) == []
        problem, = graphs.self_check(runs, without_regularization(runs))
        assert problem.off >= 0.999 * graphs.REGULARIZER_MARGIN * problem.allowed, str(problem)


def test_the_self_check_looks_at_every_tensor_a_step_changes(tmp_path):
    with opened_runs(tmp_path, ["adam-l2"]) as (run,):
        steps([run], 1)
        state = run.step_state()
        assert {"feed.position", "loss_sum", "wrong"} <= set(state)
        assert {k for k in state if k.startswith("model.")} == {f"model.{k}" for k in run.model.state_dict()}
        assert {"optimizer.0.exp_avg", "optimizer.0.exp_avg_sq", "optimizer.0.step"} <= set(state)
        assert any(k.endswith("running_var") for k in state) and any(k.endswith("num_batches_tracked") for k in state)


def test_no_room_for_the_check_near_an_epochs_end(tmp_path):
    with opened_runs(tmp_path, ["adam-l2"]) as runs:
        steps(runs, runs[0].feed.steps - graphs.CHECK_STEPS)
        assert graphs.room_for_check(runs)
        steps(runs, 1)
        assert not graphs.room_for_check(runs)


# ---- the pack's probe, with graphs that stand in for CUDA graphs ---------------------------------------------

class FakeResources:
    """GraphResources without a GPU; counts how often a pack makes them."""
    made = 0

    def __init__(self, device):
        FakeResources.made += 1

    on_side_stream = staticmethod(contextlib.nullcontext)


class Probe:
    """graphs.capture's stand-in: records every attempt; `graph(runs)` makes the step to replay, or None for a
    capture that fails."""

    def __init__(self, graph):
        self.graph, self.attempts = graph, []

    def __call__(self, runs, resources):
        self.attempts.append([run.run_id for run in runs])
        step = self.graph(runs)
        if step is None:
            return None, "RuntimeError: operation not permitted when stream is capturing"
        step.release = lambda: None
        return step, None


@pytest.fixture
def pretend_gpu(monkeypatch):
    """Every run counts as capturable; `install(graph)` sets what a capture gives."""
    FakeResources.made = 0
    monkeypatch.setattr(graphs, "why_not_capturable", lambda run: graphs.short_epoch(run.feed.steps))
    monkeypatch.setattr(graphs, "GraphResources", FakeResources)

    def install(graph):
        probe = Probe(graph)
        monkeypatch.setattr(graphs, "capture", probe)
        return probe
    return install


class RightGraph:
    def __init__(self, runs):
        self.step = graphs.EagerStep(runs)

    def __call__(self):
        return self.step()


@pytest.fixture(scope="module")
def solo(tmp_path_factory):
    """Each run trained alone, eagerly (one thread)."""
    base = tmp_path_factory.mktemp("solo")
    for name, overrides in RUNS.items():
        pack.train(compose_config(ONE_THREAD + overrides), base / name)
    return base


def train_pack(tmp_path, names=tuple(RUNS), apart=False):
    specs = [pack.RunSpec(compose_config(ONE_THREAD + RUNS[name]), tmp_path / name) for name in names]
    return pack.train_runs(specs, apart_unless_captured=apart)


def test_a_right_graph_is_checked_once_then_replayed_and_recaptured_on_one_set_of_resources(pretend_gpu, tmp_path,
                                                                                          solo, caplog):
    caplog.set_level(logging.INFO, logger="sparsesweep")
    probe = pretend_gpu(RightGraph)
    outcomes = train_pack(tmp_path)
    assert [error for _, error in outcomes] == [None] * 3
    # The probe, then one capture at the LR's decay (the smoke schedule's step 40); the same resources.
    assert len(probe.attempts) == 2 and FakeResources.made == 1
    for (results, _), name in zip(outcomes, RUNS):
        assert results["graph_steps"] == results["iterations"] - graphs.WARMUP_STEPS
        assert run_state(tmp_path / name) == run_state(solo / name), name
    assert caplog.text.count("steps captured in a CUDA graph (self-checked against 3 eager steps") == 3


@pytest.mark.parametrize("graph", [lambda runs: None, without_l2], ids=["capture-fails", "self-check-fails"])
def test_a_refused_probe_is_tried_once_and_every_run_trains_eagerly_saying_why(pretend_gpu, tmp_path, solo, caplog,
                                                                               graph):
    caplog.set_level(logging.INFO, logger="sparsesweep")
    probe = pretend_gpu(graph)
    outcomes = train_pack(tmp_path)
    assert len(probe.attempts) == 1  # nothing retries: not per run, not at the LR change
    for (results, error), name in zip(outcomes, RUNS):
        assert error is None and results["graph_steps"] == 0
        assert run_state(tmp_path / name) == run_state(solo / name), name  # the wrong graph trained nothing
    lines = [r.getMessage() for r in caplog.records if "not captured in a CUDA graph" in r.getMessage()]
    assert len(lines) == 3 and all(line.endswith("; it trains eagerly") for line in lines)
    assert {line.split(":")[0] for line in lines} == {f"run {r['run_id']}" for r, _ in outcomes}


@pytest.mark.parametrize("apart", [False, True], ids=["pack_size=K", "pack_size=auto"])
def test_epochs_too_short_to_check_on_are_a_refusal_said_up_front(pretend_gpu, tmp_path, caplog, apart):
    # 80 images at batch 40: 2 batches per epoch, fewer than the check's 3 steps: never captured, never overrun.
    caplog.set_level(logging.INFO, logger="sparsesweep")
    probe = pretend_gpu(RightGraph)
    specs = [pack.RunSpec(compose_config(ONE_THREAD + RUNS[name] + ["dataset.train_size=80"]), tmp_path / name)
             for name in ("adam-l2", "sgd-l2")]
    outcomes = pack.train_runs(specs, apart_unless_captured=apart)
    assert probe.attempts == []
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO and "not captured" in r.getMessage()]
    assert len(lines) == 2 and all("its epoch of 2 step(s) is shorter than the graph's self-check" in line
                                   for line in lines)
    if apart:  # pack_size=auto: the runs leave at once, each to train in a process of its own
        assert [type(error) for _, error in outcomes] == [pack.TrainApart] * 2
        assert "each trains in a process of its own" in caplog.text
        assert all((tmp_path / name / rundir.CHECKPOINT).exists() for name in ("adam-l2", "sgd-l2"))  # to resume from
    else:  # an explicit pack size: they train together, eagerly
        assert [results["status"] for results, _ in outcomes] == ["completed"] * 2


def sweep_jobs(tmp_path):
    """RUNS as the jobs of a sweep's pack."""
    from sparsesweep import jobs

    members = []
    for number, name in enumerate(RUNS):
        cfg = compose_config(ONE_THREAD + RUNS[name])
        hydra = {"runtime": {"output_dir": str(tmp_path / name)}, "overrides": {"task": []}}
        members.append(jobs.Job(cfg, jobs.OmegaConf.create(hydra), number))
    return members


@pytest.mark.slow
def test_a_pack_whose_probe_is_refused_trains_each_run_in_a_process_of_its_own(pretend_gpu, tmp_path, solo, caplog):
    from sparsesweep import jobs

    caplog.set_level(logging.INFO, logger="sparsesweep")
    pretend_gpu(lambda runs: None)
    said = jobs.train_jobs(sweep_jobs(tmp_path), in_sweep=True, own_logs=True, apart_unless_captured=True)
    assert said == [None, None, None]
    assert "each trains in a process of its own" in caplog.text
    for name in RUNS:
        log = (tmp_path / name / "sparsesweep.log").read_text()
        assert "leaves its pack at step 4 (checkpoint saved)" in log and "resuming from" in log
        assert run_state(tmp_path / name) == run_state(solo / name), name


@pytest.mark.slow
def test_on_a_gpu_a_pack_that_may_go_apart_trains_in_a_child_so_this_process_never_holds_cuda(tmp_path, solo,
                                                                                            monkeypatch):
    # On a GPU in EXCLUSIVE_PROCESS mode a process that holds a CUDA context keeps every other one off the device:
    # the process that starts the runs apart must never have made one. Here the pack's child trains on the CPU,
    # where nothing is captured, so every run leaves at once.
    from sparsesweep import jobs

    def no_cuda_here(*args, **kwargs):
        raise AssertionError("the process that starts the runs apart trained on the device or initialised CUDA")

    monkeypatch.setattr(jobs, "on_a_gpu", lambda members: True)
    monkeypatch.setattr(torch.cuda, "_lazy_init", no_cuda_here)
    monkeypatch.setattr(pack, "train_runs", no_cuda_here)  # on a GPU, a CUDA context comes with training
    said = jobs.train_jobs(sweep_jobs(tmp_path), in_sweep=True, own_logs=True, apart_unless_captured=True)
    assert said == [None, None, None]
    for name in RUNS:
        log = (tmp_path / name / "sparsesweep.log").read_text()
        assert "leaves its pack at step 0 (checkpoint saved)" in log and "resuming from" in log
        assert run_state(tmp_path / name) == run_state(solo / name), name


# ---- checkpoints between captured and eager runs --------------------------------------------------------------

def test_a_captured_runs_checkpoint_resumes_eagerly_exactly(tmp_path, monkeypatch):
    cfg = compose_config(ONE_THREAD + RUNS["adam-l2"] + ["checkpoint_interval_min=0"])
    straight = pack.train(cfg, tmp_path / "straight")

    class Stop(Exception):
        pass

    real_save, saves = pack.Run.save, []

    def stop_after_30(run):
        real_save(run)
        saves.append(None)
        if len(saves) == 30:
            raise Stop

    monkeypatch.setattr(pack.Run, "save", stop_after_30)
    with pytest.raises(Stop):
        pack.train(cfg, tmp_path / "resumed")
    monkeypatch.setattr(pack.Run, "save", real_save)
    # What a captured run writes: its optimizer's groups are capturable (step counts live on the device).
    path = tmp_path / "resumed" / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    for group in state["optimizer"]["param_groups"]:
        group["capturable"] = True
    torch.save(state, path)
    resumed = pack.train(cfg, tmp_path / "resumed")
    assert run_state(tmp_path / "resumed") == run_state(tmp_path / "straight")
    assert resumed["iterations"] == straight["iterations"]


@pytest.mark.parametrize("name", ["adam", "adamax", "rmsprop", "adadelta", "nadam", "radam", "adamw"])
def test_an_eager_checkpoint_loads_into_a_capturable_optimizer_as_capture_needs_it(name):
    cfg = compose_config([*SMOKE, f"optimizer={name}"])
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    eager = optim.build_optimizer(cfg.optimizer, cfg.regularizer, model)
    model(torch.ones(1, 3)).sum().backward()
    eager.step()
    captured = optim.build_optimizer(cfg.optimizer, cfg.regularizer, model, capturable=True)
    captured.load_state_dict(eager.state_dict())
    assert all(group["capturable"] for group in captured.param_groups)
    for state in captured.state.values():
        assert state["step"].dtype == torch.float32 and state["step"].device == next(model.parameters()).device
    eager.load_state_dict(captured.state_dict())  # and back: the eager optimizer stays eager
    assert not any(group["capturable"] for group in eager.param_groups)


# ---- channels_last=auto -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("setting, device, model, expected", [
    ("auto", "cpu", torch.nn.Conv2d(1, 1, 3), torch.contiguous_format),
    ("auto", "cuda", torch.nn.Conv2d(1, 1, 3), torch.channels_last),
    ("auto", "cuda", torch.nn.Linear(1, 1), torch.contiguous_format),
    (True, "cpu", torch.nn.Conv2d(1, 1, 3), torch.channels_last),
    (False, "cuda", torch.nn.Conv2d(1, 1, 3), torch.contiguous_format)])
def test_channels_last_auto_is_for_convnets_on_a_gpu(setting, device, model, expected):
    cfg = compose_config([f"performance.channels_last={str(setting).lower()}"])
    assert assemble.memory_format(cfg, torch.device(device), model) == expected
