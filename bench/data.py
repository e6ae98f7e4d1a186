"""A team's own data, each figure against its peer measured in the same run.

    images   preparing photos (~600x500 JPEG -> 64x64, decoded at a reduced scale, one core) against Pillow decoding
             the whole image and resizing it; then an epoch of a small CNN on the prepared uint8 images against the
             loop users write: a Pillow-decoding Dataset and DataLoader(num_workers=2) over the same files
    upload   a large CSV made a dataset version as the service makes it (streamed to disk and hashed, profiled in
             batches, stored) in a process of its own: its peak memory, and its time against pyarrow.csv.read_csv of
             the same file
    stream   training an MLP on a table streamed from shards against the same table in memory (samples per second),
             and the peak memory of a job on a table larger than its memory budget

Run: python bench/data.py [images] [upload] [stream] [--csv-mb 1024] [--images 400]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import common  # noqa: F401 - puts the repository on sys.path
import numpy as np

HERE = Path(__file__).resolve().parent


def photo(rng: np.random.Generator, size=(600, 500)) -> bytes:
    """A JPEG that compresses like a photo: smooth colour fields with texture."""
    from PIL import Image, ImageFilter

    w, h = size
    base = rng.integers(0, 255, (h // 20 + 1, w // 20 + 1, 3), dtype=np.uint8)
    image = Image.fromarray(base).resize(size, Image.BICUBIC)
    noise = Image.fromarray(rng.integers(0, 40, (h, w, 3), dtype=np.uint8))
    image = Image.blend(image, noise, 0.25).filter(ImageFilter.SMOOTH)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85)
    return out.getvalue()


def make_photos(folder: Path, count: int) -> Path:
    rng = np.random.default_rng(0)
    archive = folder / "photos.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as z:
        for i in range(count):
            z.writestr(f"photos/{'cat' if i % 2 else 'dog'}/{i:05d}.jpg", photo(rng))
    return archive


def pillow_whole(blob: bytes, size=(64, 64)) -> np.ndarray:
    """What users write: decode the whole image, then resize."""
    from PIL import Image

    image = Image.open(io.BytesIO(blob)).convert("RGB").resize(size, Image.BILINEAR)
    return np.asarray(image).transpose(2, 0, 1)


def one_core(fn, *args):
    """Run fn in a child process pinned to one core (os.sched_setaffinity), returning what it returns."""
    import multiprocessing as mp

    with mp.get_context("fork").Pool(1, initializer=os.sched_setaffinity, initargs=(0, {0})) as pool:
        return pool.apply(fn, args)


def _prepare_rate(archive: str) -> float:
    from trainq.data.archive import Limits
    from trainq.data.images import Target, prepare

    started = time.perf_counter()
    x, _, _ = prepare(Path(archive), Target((64, 64), "stretch", 3), ["cat", "dog"], Limits(), threads=1)
    return len(x) / (time.perf_counter() - started)


def _whole_rate(archive: str) -> float:
    from trainq.data.archive import entries

    started = time.perf_counter()
    n = sum(1 for _, blob in entries(Path(archive)) if pillow_whole(blob) is not None)
    return n / (time.perf_counter() - started)


CNN = [{"type": "conv2d", "out_channels": 16, "kernel": 3, "padding": "same"}, {"type": "activation", "fn": "relu"},
       {"type": "pool", "size": 2}, {"type": "conv2d", "out_channels": 32, "kernel": 3, "padding": "same"},
       {"type": "activation", "fn": "relu"}, {"type": "pool", "size": 2}, {"type": "flatten"},
       {"type": "dense", "units": 2}]


def images(args) -> list[str]:
    import torch

    from trainq.models.engine import fit
    from trainq.models.spec import Uploaded, parse_spec

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        archive = make_photos(folder, args.images)
        whole = max(one_core(_whole_rate, str(archive)) for _ in range(2))
        ours = max(one_core(_prepare_rate, str(archive)) for _ in range(2))
        print(f"decode + resize to 64x64 on one core: Pillow whole image {whole:.0f}/s, trainq {ours:.0f}/s")

        # an epoch: the engine on prepared uint8 images against a Pillow Dataset + DataLoader(num_workers=2)
        from trainq.data.archive import Limits
        from trainq.data.images import Target, prepare

        x, y, _ = prepare(archive, Target((64, 64), "stretch", 3), ["cat", "dog"], Limits(), threads=2)
        files = folder / "files"
        with zipfile.ZipFile(archive) as z:
            z.extractall(files)
        paths = sorted(files.rglob("*.jpg"))
        epochs = 3
        spec = parse_spec({"name": "photos", "dataset": {"name": "upload", "upload": "photos", "image_size": 64,
                                                         "val_fraction": 0, "test_fraction": 0},
                           "model": {"layers": CNN}, "loss": {"type": "cross_entropy"},
                           "optimizer": {"type": "adam", "lr": 0.001},
                           "training": {"epochs": epochs, "batch_size": 64, "seed": 0}},
                          uploads=lambda ref: Uploaded("photos", 1, "arrays", len(x), 2, ("cat", "dog"),
                                                       tuple(x.shape[1:])))
        torch.set_num_threads(2)
        engine_times = []
        for _ in range(2):
            result = fit(spec, device="cpu", arrays=(x, y))
            engine_times.append(result.train_seconds / epochs)
        loader_times = [dataloader_epoch(paths, epochs) for _ in range(2)]
        engine, loader = min(engine_times), min(loader_times)
        print(f"an epoch of {len(x)} photos at 64x64 (small CNN, batch 64): DataLoader(num_workers=2) with Pillow "
              f"{loader:.2f}s, trainq on prepared images {engine:.2f}s")
    return [f"| image preparation, ~600x500 JPEG to 64x64, one core | Pillow whole image {whole:.0f}/s | "
            f"{ours:.0f}/s | {ours / whole:.2f}x | >= 500/s |",
            f"| an epoch on {len(x)} photos, small CNN | Pillow Dataset + DataLoader(num_workers=2) {loader:.2f}s | "
            f"{engine:.2f}s | {loader / engine:.2f}x faster | >= 3x |"]


def dataloader_epoch(paths: list[Path], epochs: int) -> float:
    """The loop users write: a Dataset that opens and decodes each file, a DataLoader with two workers."""
    import torch
    from PIL import Image
    from torch import nn

    class Files(torch.utils.data.Dataset):
        def __len__(self):
            return len(paths)

        def __getitem__(self, i):
            image = Image.open(paths[i]).convert("RGB").resize((64, 64), Image.BILINEAR)
            x = torch.from_numpy(np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255)
            return x, int(paths[i].parent.name == "cat")

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1),
                          nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 16 * 16, 2))
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    loader = torch.utils.data.DataLoader(Files(), batch_size=64, shuffle=True, num_workers=2)
    started = time.perf_counter()
    for _ in range(epochs):
        for xb, yb in loader:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(xb), yb).backward()
            optimizer.step()
    return (time.perf_counter() - started) / epochs


# ---------------------------------------------------------------------------------------------------------------------
# A large CSV upload
# ---------------------------------------------------------------------------------------------------------------------


def make_csv(path: Path, megabytes: int) -> int:
    """A churn-like table of about `megabytes` MB: an id, two categories, numbers with missing values, a label."""
    rng = np.random.default_rng(0)
    rows, written = 0, 0
    plans = np.array(["free", "basic", "pro", "team"])
    regions = np.array(["north", "south", "east", "west", "centre"])
    with open(path, "w") as f:
        f.write("customer_id,plan,region,tenure,monthly,usage,support_calls,churned\n")
        while written < megabytes * 1_000_000:
            n = 200_000
            ids = np.char.add("C", (np.arange(rows, rows + n)).astype(str))
            tenure = rng.integers(0, 72, n).astype(str)
            tenure[rng.random(n) < 0.05] = ""
            block = np.stack([ids, plans[rng.integers(0, 4, n)], regions[rng.integers(0, 5, n)], tenure,
                              np.round(rng.normal(50, 15, n), 2).astype(str),
                              np.round(rng.gamma(2, 10, n), 3).astype(str), rng.integers(0, 9, n).astype(str),
                              np.where(rng.random(n) < 0.2, "yes", "no")], axis=1)
            text = "\n".join(",".join(r) for r in block.tolist()) + "\n"
            f.write(text)
            written += len(text)
            rows += n
    return rows


def peak_mb() -> float:
    """This process's peak resident memory since it started (VmHWM: unlike getrusage's ru_maxrss, which Linux keeps
    across exec, it counts only this program, not the parent it was forked from)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _upload_child(path: str, out: str) -> None:
    """In a fresh process: the upload route's work on a file (receive, examine, store), its time and peak RSS."""
    from trainq.data.archive import Limits
    from trainq.service.objects import FileStore
    from trainq.service.uploads import discard, examine, receive

    folder = Path(out)
    before = peak_mb()
    started = time.perf_counter()
    with open(path, "rb") as f:
        received = receive(f, folder / "tmp")
    examined = time.perf_counter()
    found = examine(received.path, target="churned", task=None, max_rows=0, limits=Limits(), max_pixels=1)
    stored = time.perf_counter()
    FileStore(folder / "storage").put_file("datasets/x.csv", found.stored, move=True)
    seconds = time.perf_counter() - started
    discard(received.path, folder / "storage" / "datasets" / "x.csv")  # the next run starts from the same disk
    print(json.dumps({"seconds": seconds, "peak_mb": peak_mb(), "imports_mb": before, "rows": found.rows,
                      "receive": examined - started, "profile": stored - examined,
                      "store": started + seconds - stored}))


def _read_csv_child(path: str) -> None:
    import pyarrow.csv as pcsv

    started = time.perf_counter()
    table = pcsv.read_csv(path)
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "rows": table.num_rows, "peak_mb": peak_mb()}))


def child(code: str, *args: str) -> dict:
    script = f"import sys; sys.path.insert(0, {str(HERE)!r}); import common, data; data.{code}(*sys.argv[1:])"
    result = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, cwd=HERE)
    if result.returncode:
        raise RuntimeError(result.stderr[-2000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def upload(args) -> list[str]:
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        path = Path(tmp) / "big.csv"
        started = time.perf_counter()
        rows = make_csv(path, args.csv_mb)
        size = path.stat().st_size
        print(f"made {path.name}: {size / 1e6:.0f} MB, {rows:,} rows in {time.perf_counter() - started:.0f}s")
        ours = min((child("_upload_child", str(path), tmp) for _ in range(2)), key=lambda r: r["seconds"])
        peer = min((child("_read_csv_child", str(path)) for _ in range(2)), key=lambda r: r["seconds"])
        print(f"upload as a version: {ours['seconds']:.1f}s (body to disk and its sha256 {ours['receive']:.1f}s, "
              f"profile {ours['profile']:.1f}s, store {ours['store']:.1f}s), peak RSS {ours['peak_mb']:.0f} MB "
              f"(imports {ours['imports_mb']:.0f} MB); pyarrow.csv.read_csv: {peer['seconds']:.1f}s, peak RSS "
              f"{peer['peak_mb']:.0f} MB")
    return [f"| a {size / 1e9:.1f} GB CSV made a dataset version (hash, profile, store) | pyarrow.csv.read_csv "
            f"{peer['seconds']:.1f}s | {ours['seconds']:.1f}s | {ours['seconds'] / peer['seconds']:.2f}x the time | "
            "<= 1.5x |",
            f"| the same upload's peak memory (one process) | read_csv {peer['peak_mb']:.0f} MB | "
            f"{ours['peak_mb']:.0f} MB | | < 300 MB |"]


# ---------------------------------------------------------------------------------------------------------------------
# Streamed from shards against in memory
# ---------------------------------------------------------------------------------------------------------------------

STREAM_SPEC = {"name": "streamed", "dataset": {"name": "upload", "upload": "big", "seed": 0},
               "model": {"layers": [{"type": "dense", "units": 64}, {"type": "activation", "fn": "relu"},
                                    {"type": "dense", "units": 64}, {"type": "activation", "fn": "relu"},
                                    {"type": "dense", "units": 2}]},
               "loss": {"type": "cross_entropy"}, "optimizer": {"type": "adam", "lr": 0.001},
               "training": {"epochs": 2, "batch_size": 256, "seed": 0, "checkpoint_every_seconds": 0}}


def _stream_child(path: str, folder: str, placement: str, memory_mb: str) -> None:
    """In a fresh process: the worker's preparation and the training of STREAM_SPEC on the table at `path`, placed
    as asked; its samples per second of training and the process's peak RSS."""
    import torch

    from trainq.data import formats, profile
    from trainq.models.engine import fit
    from trainq.models.spec import Uploaded, parse_spec
    from trainq.settings import Settings
    from trainq.workers.data import source

    torch.set_num_threads(1)
    path_ = Path(path)
    found = profile.profile_table(formats.batches(path_, "csv"), "csv", target="churned")
    uploaded = Uploaded("big", 1, "table", found["rows"], 2, ("no", "yes"), None, found, "bench", "bench")
    raw = {**STREAM_SPEC, "training": {**STREAM_SPEC["training"], "data_placement": placement}}
    spec = parse_spec(raw, uploads=lambda ref: uploaded)
    settings = Settings(data_dir=Path(folder), data_memory_mb=int(memory_mb))
    data = source(spec.dataset, path_, settings, placement=placement)
    result = fit(spec, device="cpu", arrays=data)
    train_rows = data.manifest.rows("train") if hasattr(data, "manifest") else round(found["rows"] * 0.7)
    print(json.dumps({"samples_per_second": train_rows * result.epochs / result.train_seconds,
                      "peak_mb": peak_mb(),
                      "accuracy": result.metrics["test_accuracy"]}))


def stream(args) -> list[str]:
    budget = args.budget_mb
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        small, big = Path(tmp) / "small.csv", Path(tmp) / "big.csv"
        make_csv(small, 2)
        rows = make_csv(big, args.stream_mb)
        width = (4 + 1) + (5 + 1) + 4  # the codec's columns: plan and region one-hot with their unknowns, numbers
        in_memory = rows * (width * 4 + 8) / 2**20
        print(f"{big.name}: {big.stat().st_size / 1e6:.0f} MB, {rows:,} rows, about {in_memory:.0f} MiB encoded in "
              f"memory against a budget of {budget} MiB ({in_memory / budget:.1f}x)")
        memory = [child("_stream_child", str(big), tmp, "device", "100000") for _ in range(2)]
        streamed = [child("_stream_child", str(big), tmp, "stream", str(budget)) for _ in range(2)]
        baseline = child("_stream_child", str(small), tmp, "device", "100000")  # torch and the engine, little data
        speed_memory = max(r["samples_per_second"] for r in memory)
        speed_stream = max(r["samples_per_second"] for r in streamed)
        peak = min(r["peak_mb"] for r in streamed)
        print(f"in memory: {speed_memory:,.0f} samples/s (peak {memory[0]['peak_mb']:.0f} MB); streamed: "
              f"{speed_stream:,.0f} samples/s, peak {peak:.0f} MB; the same job on a 2 MB table: peak "
              f"{baseline['peak_mb']:.0f} MB; test accuracy {memory[0]['accuracy']:.3f} / {streamed[0]['accuracy']:.3f}")
    return [f"| an MLP on a {rows:,}-row table, one thread: streamed from shards against in memory | "
            f"{speed_memory:,.0f} samples/s | {speed_stream:,.0f} samples/s | {speed_stream / speed_memory:.2f}x | "
            ">= 0.9x |",
            f"| the same job's peak memory, the table {in_memory / budget:.1f}x its {budget} MiB budget | the job on a "
            f"2 MB table {baseline['peak_mb']:.0f} MB | {peak:.0f} MB | {peak - baseline['peak_mb']:.0f} MB above | "
            f"<= {budget} MB above |"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("parts", nargs="*", default=["images", "upload", "stream"])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--csv-mb", type=int, default=1024)
    parser.add_argument("--stream-mb", type=int, default=150, help="the streamed table's CSV size")
    parser.add_argument("--budget-mb", type=int, default=32, help="the worker's TRAINQ_DATA_MEMORY_MB")
    parser.add_argument("--tmp", default=None, help="where the large files go (default: the system's temp folder)")
    args = parser.parse_args()
    rows = []
    for part in args.parts:
        rows += globals()[part](args)
    print()
    print("| figure | baseline (same run) | trainq | ratio | target |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
