"""Training throughput of BasicNet at batch 40 on CIFAR-size data (the embedded renderings at 32x32, one
channel, so that it runs offline; augmented like CIFAR), in optimizer steps per second:

  (a) a plain PyTorch loop: torchvision transforms per sample (random crop + flip + normalize) and a
      DataLoader, the way most training scripts are written;
  (b) sparsesweep's default loop (train.run: data on the device when it is a GPU, batched augmentation);
  (c) the same with torch.compile;
  (d) K = 1, 2, 4, 8 sparsesweep runs at once (separate processes, as the local launcher packs them):
      aggregate steps/s;
and the implied wall time of the paper's Table 1 (174 runs x 406,250 steps) on one GPU and on 8.

    python benchmarks/throughput.py                  # GPU if there is one, full width
    python benchmarks/throughput.py --cpu-small      # CPU, quarter width at 16x16 (a quick check that it runs)
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
TABLE1_STEPS = 174 * 406_250


def config(args, extra=()):
    overrides = ["dataset=shapes_clean", f"dataset.resolution={args.resolution}", f"model.width_multiplier={args.width}",
                 "batch_size=40", "dataset.augment=true",
                 f"device={args.device}", "schedule.decay_epochs=0", *extra]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=overrides)


def plain_dataloader_steps_per_s(args) -> float:
    """(a): per-sample transforms in a DataLoader, as a typical script does it."""
    from sparsesweep._torchvision import import_torchvision
    from sparsesweep.models import build_model
    from sparsesweep.shapes import render_shapes

    transforms = import_torchvision().transforms
    cfg = config(args)
    device = torch.device(args.device)
    images, labels = render_shapes(10_000, resolution=args.resolution, num_classes=10, background="clean", seed=0)
    augment = transforms.Compose([transforms.RandomCrop(args.resolution, padding=4), transforms.RandomHorizontalFlip(),
                                  transforms.ConvertImageDtype(torch.float32),
                                  transforms.Normalize((0.3,), (0.25,))])

    class Augmented(torch.utils.data.Dataset):
        def __len__(self):
            return len(labels)

        def __getitem__(self, i):
            return augment(images[i]), labels[i]

    loader = torch.utils.data.DataLoader(Augmented(), batch_size=40, shuffle=True, drop_last=True,
                                         num_workers=args.workers, pin_memory=device.type == "cuda",
                                         persistent_workers=args.workers > 0)
    model = build_model(cfg.model, 1, 10).to(device)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3, betas=(0.9, 0.99), weight_decay=1e-4)
    steps, start = 0, None
    while True:
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
            if steps == args.warmup:
                synchronize(device)
                start = time.perf_counter()
            if steps == args.warmup + args.steps:
                synchronize(device)
                return args.steps / (time.perf_counter() - start)


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sparsesweep_steps_per_s(args, extra=()) -> float:
    """(b)/(c): two train.run calls on the same data that differ only in their number of steps; the
    difference in time and steps is the loop's rate, free of set-up, compilation, evaluation, checkpoint
    and the final measurement, which both calls pay alike."""
    from sparsesweep import train

    images = 40 * (args.warmup + args.steps)

    def timed(steps):
        cfg = config(args, [f"dataset.train_size={images}", "dataset.test_size=40", "schedule.base_epochs=1",
                            f"schedule.iterations_at_batch_size={images // steps}", *extra])
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            done = train.run(cfg, Path(out))["iterations"]
            return time.perf_counter() - start, done

    timed(args.warmup)  # first call: one-time costs (lazy imports, kernel selection, compilation caches)
    (short_time, short_steps), (long_time, long_steps) = timed(args.warmup), timed(args.warmup + args.steps)
    return (long_steps - short_steps) / (long_time - short_time)


def packed_steps_per_s(args, k: int) -> float:
    """(d): k processes each running (b) at once; the aggregate of their rates."""
    command = [sys.executable, __file__, "--single", "--device", args.device, "--width", str(args.width),
               "--resolution", str(args.resolution), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // k))}
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env) for _ in range(k)]
    return sum(json.loads(p.communicate()[0].strip().splitlines()[-1])["steps_per_s"] for p in processes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--cpu-small", action="store_true", help="quarter width at 16x16 on CPU, few steps")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--workers", type=int, default=4, help="DataLoader workers of the plain loop")
    parser.add_argument("--packed", default="1,2,4,8")
    parser.add_argument("--single", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cpu_small:
        args.device, args.width, args.resolution, args.steps, args.warmup, args.workers = "cpu", 0.25, 16, 60, 10, 0
        args.packed = "1,2"
    if args.single:
        print(json.dumps({"steps_per_s": sparsesweep_steps_per_s(args)}))
        return
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({os.cpu_count()} cores)"
    print(f"BasicNet width x{args.width}, {args.resolution}x{args.resolution}, batch 40, on {name}")
    plain = plain_dataloader_steps_per_s(args)
    default = sparsesweep_steps_per_s(args)
    compiled = sparsesweep_steps_per_s(args, ["performance.compile=true"])
    print(f"(a) plain DataLoader loop     {plain:8.1f} steps/s")
    print(f"(b) sparsesweep default       {default:8.1f} steps/s   {default / plain:5.2f}x (a)")
    print(f"(c) sparsesweep + compile     {compiled:8.1f} steps/s   {compiled / plain:5.2f}x (a)")
    best = {}
    for k in map(int, args.packed.split(",")):
        best[k] = packed_steps_per_s(args, k)
        print(f"(d) {k} runs at once, total    {best[k]:8.1f} steps/s   {best[k] / best[1]:5.2f}x one run")
    rate = max(best.values())
    print(f"Table 1 ({TABLE1_STEPS:,} steps) at {rate:.0f} steps/s: {TABLE1_STEPS / rate / 3600:.1f} h on one "
          f"device, {TABLE1_STEPS / rate / 3600 / 8:.1f} h on 8")


if __name__ == "__main__":
    main()
