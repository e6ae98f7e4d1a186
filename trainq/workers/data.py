"""An uploaded dataset version on this worker: fetched once into a local cache (versions never change, so the cache is
keyed by content), then handed to the engine as what it reads: arrays (an NPZ), a pyarrow Table (a table, whose
preprocessing the engine fits on the training split), or images decoded and resized once per target size into uint8
arrays, kept beside the file for the next run at that size."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from trainq.data.archive import Limits
from trainq.models.spec import DatasetSpec, Uploaded, class_names_of, image_target
from trainq.settings import Settings


def uploaded_of(d: dict[str, Any]) -> Uploaded:
    """The claim's description of a dataset version, as the spec takes it."""
    return Uploaded(d["name"], d["version"], d["kind"], d["rows"], d["classes"],
                    tuple(d["class_names"]) if d.get("class_names") else None,
                    tuple(d["shape"]) if d.get("shape") else None, d.get("profile"), d.get("sha256", ""), d["id"])


def cache_folder(settings: Settings) -> Path:
    return Path(settings.data_dir).resolve() / "cache" / "datasets"


def local_file(d: dict[str, Any], fetch: Callable[[Path], Path], settings: Settings) -> Path:
    """The version's file in this worker's cache, fetched with `fetch(target)` on a miss."""
    ext = "npz" if d["kind"] == "arrays" else d.get("source", "bin")
    path = cache_folder(settings) / f"{d['sha256'] or d['id']}.{ext}"
    return path if path.is_file() else fetch(path)


def source(ds: DatasetSpec, path: Path, settings: Settings, say: Callable[[str], None] = lambda m: None,
           threads: int = 1, placement: str = "auto"):
    """What the engine reads for the spec's uploaded dataset: (x, y) arrays, a pyarrow Table, or a table's shards to
    stream (`placement`: the spec's training.data_placement)."""
    kind = ds.uploaded.kind
    if kind == "arrays":
        with np.load(path, allow_pickle=False) as archive:
            return archive["x"], archive["y"]
    if kind == "table":
        if streams(ds, placement, settings):
            return streamed_table(ds, path, settings, say)
        from trainq.data.formats import read_table

        return read_table(path, ds.uploaded.profile["format"], settings.data_memory_mb * 2**20)
    return prepared_images(ds, path, settings, say, threads)


def streams(ds: DatasetSpec, placement: str, settings: Settings) -> bool:
    """Whether an uploaded table trains streamed from shards: asked for, or (auto) larger in memory than the
    worker's budget (TRAINQ_DATA_MEMORY_MB)."""
    if placement == "stream":
        return True
    if placement != "auto":
        return False
    info = ds.info()
    in_memory = (info.fixed_size or 0) * (info.stored_width * 4 + 8)
    return in_memory > settings.data_memory_mb * 2**20


def streamed_table(ds: DatasetSpec, path: Path, settings: Settings, say: Callable[[str], None]):
    """The table as shards in this worker's cache, made once per (version, preprocessing, split): rows encoded by
    the codec fitted on the training rows, a shard at most a sixteenth of the memory budget."""
    import hashlib

    from trainq.data.formats import batches
    from trainq.data.shards import Manifest, build
    from trainq.models.spec import class_names_of, planned_codec, target_of
    from trainq.models.streams import Streamed

    planned = planned_codec(ds)
    recipe = json.dumps({"codec": planned.as_dict(), "target": target_of(ds), "seed": ds.seed,
                         "val": ds.val_fraction, "test": ds.test_fraction, "split": ds.split_column,
                         "budget": settings.data_memory_mb}, sort_keys=True)
    folder = path.with_name(f"{path.stem}-shards-{hashlib.sha256(recipe.encode()).hexdigest()[:16]}")
    manifest = Manifest.load(folder)
    fmt = ds.uploaded.profile["format"]
    if manifest is None:
        row_bytes = planned.width * 4 + 8
        shard_rows = max(1024, settings.data_memory_mb * 2**20 // 16 // row_bytes)
        started = time.monotonic()
        say(f"writing {ds.uploaded.rows:,} rows into shards of {shard_rows:,} rows, to stream within "
            f"{settings.data_memory_mb} MiB")
        budget = settings.data_memory_mb * 2**20
        manifest = build(lambda: batches(path, fmt, budget), planned, target_of(ds), class_names_of(ds), folder,
                         seed=ds.seed, val_fraction=ds.val_fraction, test_fraction=ds.test_fraction,
                         split_column=ds.split_column, shard_rows=shard_rows, say=say)
        say(f"{sum(len(v) for v in manifest.shards.values())} shards written in {time.monotonic() - started:.1f}s: "
            + ", ".join(f"{name} {manifest.rows(name):,} rows" for name in manifest.shards))
    return Streamed(manifest, path, fmt, ds.seed)


def prepared_images(ds: DatasetSpec, path: Path, settings: Settings, say: Callable[[str], None],
                    threads: int) -> tuple[np.ndarray, np.ndarray]:
    """The archive's images decoded and resized to the spec's target, from this worker's cache when prepared before
    (x uint8 (N, C, H, W), y int64)."""
    from trainq.data.images import prepare

    target = image_target(ds)
    h, w = target.size
    ready = path.with_name(f"{path.stem}-{h}x{w}-{target.resize}-{target.channels}.npz")
    if ready.is_file():
        with np.load(ready, allow_pickle=False) as archive:
            return archive["x"], archive["y"]
    total = ds.uploaded.rows
    started = time.monotonic()
    say(f"preparing {total} images at {h}x{w} ({target.resize}, {target.channels} channel"
        f"{'s' if target.channels > 1 else ''}), once for this size")
    x, y, problems = prepare(path, target, class_names_of(ds), Limits(max_bytes=settings.max_archive_mb * 2**20),
                             max_pixels=settings.max_image_pixels, threads=threads,
                             progress=lambda done: say(f"prepared {done} of {total} images"))
    seconds = time.monotonic() - started
    say(f"prepared {len(x)} images in {seconds:.1f}s ({len(x) / max(seconds, 1e-9):.0f}/s)"
        + (f"; {len(problems)} left out: " + json.dumps(problems[:5]) if problems else ""))
    tmp = ready.with_name(ready.name + ".part")
    with open(tmp, "wb") as f:
        np.savez(f, x=x, y=y)
    tmp.replace(ready)
    return x, y
