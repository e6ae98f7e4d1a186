"""Images from an archive of class folders (`cat/001.png`, `dog/002.jpg`), or from an archive holding a table of
`path,label`: profiled at upload, decoded and resized once into uint8 arrays for training, one by one for a
prediction. Pillow decodes; a JPEG is decoded at a reduced scale when the target is smaller (`Image.draft`), which is
what makes preparation fast. An image's pixel count is checked from its header before it is decoded (image bombs).
"""

from __future__ import annotations

import io
import posixpath
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from trainq.data.archive import Limits, entries
from trainq.data.formats import DataError, read_table, sniff
from trainq.data.profile import MAX_CLASSES, class_order

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
TABLE_EXTENSIONS = (".csv", ".tsv", ".parquet", ".jsonl")
MAX_PIXELS = 40_000_000  # an image with more pixels than this (from its header) is refused undecoded
DEFAULT_SIDE = 64  # images larger than this train at 64 x 64 unless the spec says image_size
COLOUR_MODES = {"RGB", "RGBA", "P", "CMYK", "YCbCr", "LAB", "HSV", "PA", "RGBX"}
SAMPLES_PER_CLASS = 4
LISTED_PROBLEMS = 100
PATH_COLUMNS = ("path", "file", "filename", "image", "file_name")
LABEL_COLUMNS = ("label", "class", "target", "y")


@dataclass(frozen=True)
class Target:
    """How images become model inputs: size (height, width), resize (stretch | crop | pad), channels (1 | 3)."""

    size: tuple[int, int]
    resize: str = "stretch"
    channels: int = 3


def open_image(blob: bytes, max_pixels: int = MAX_PIXELS):
    """A Pillow image, its size checked from the header before any pixel is decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(blob))
    except UnidentifiedImageError:
        raise DataError("not an image Pillow can read (PNG, JPEG, BMP, GIF, WebP, TIFF)") from None
    except Image.DecompressionBombError as exc:
        raise DataError(f"refused: {exc}") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"not a readable image: {exc}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise DataError(f"{width} x {height} pixels, more than {max_pixels} (TRAINQ_MAX_IMAGE_PIXELS): refused "
                        "before decoding (an image bomb, or an image far larger than training needs)")
    return image


def decode(blob: bytes, target: Target, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """One image as uint8 (channels, height, width) at the target size."""
    from PIL import Image, ImageOps

    image = open_image(blob, max_pixels)
    height, width = target.size
    mode = "L" if target.channels == 1 else "RGB"
    try:
        if image.format == "JPEG":  # decode at 1/2, 1/4 or 1/8 scale where that still covers the target
            scale = max(width / image.size[0], height / image.size[1])
            if target.resize == "pad":
                scale = min(width / image.size[0], height / image.size[1])
            image.draft(mode, (max(1, int(image.size[0] * scale)), max(1, int(image.size[1] * scale))))
        image.load()
        if image.mode != mode:
            image = image.convert(mode)
        if target.resize == "crop":
            image = ImageOps.fit(image, (width, height), Image.BILINEAR)
        elif target.resize == "pad":
            image = ImageOps.pad(image, (width, height), Image.BILINEAR, color=0)
        elif image.size != (width, height):
            image = image.resize((width, height), Image.BILINEAR, reducing_gap=3.0)
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"the image cannot be decoded: {exc}") from None
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels[None] if pixels.ndim == 2 else np.ascontiguousarray(pixels.transpose(2, 0, 1))


# ---------------------------------------------------------------------------------------------------------------------
# Archives of images
# ---------------------------------------------------------------------------------------------------------------------


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _common_folder(names: list[str]) -> str:
    """The one folder every entry sits in (a zipped folder's own name), to be stripped; '' if there is none."""
    tops = {n.split("/", 1)[0] for n in names}
    if len(tops) == 1 and all("/" in n for n in names):
        return next(iter(tops)) + "/"
    return ""


@dataclass
class Layout:
    """Which entries are images and their labels; the entries that are not usable, and why."""

    labels: dict[str, str]  # entry name -> class name
    problems: list[dict[str, str]]  # {"file", "reason"}


def layout(names: list[str], table: tuple[str, bytes] | None, target: str | None) -> Layout:
    """Labels by class folder (the first folder under the archive's own), or from a table of paths and labels."""
    prefix = _common_folder(names)
    problems: list[dict[str, str]] = []
    if table is not None:
        return _table_layout(names, table, target, prefix)
    labels = {}
    for name in names:
        inner = name[len(prefix):]
        if not _is_image(name):
            problems.append({"file": name, "reason": "not an image (by its extension)"})
        elif "/" not in inner:
            problems.append({"file": name, "reason": "not in a class folder: put each image in a folder named by "
                                                     "its class (cat/001.png)"})
        else:
            labels[name] = inner.split("/", 1)[0]
    return Layout(labels, problems)


def _table_layout(names: list[str], table: tuple[str, bytes], target: str | None, prefix: str) -> Layout:
    name, blob = table
    rows = read_table(io.BytesIO(blob), sniff(blob[:65536]))
    columns = rows.column_names
    path_column = next((c for c in columns if c.lower() in PATH_COLUMNS), None)
    label_column = target or next((c for c in columns if c.lower() in LABEL_COLUMNS), None)
    if path_column is None or label_column not in columns:
        raise DataError(f"{name}: a table of images needs a column of paths ({', '.join(PATH_COLUMNS)}) and one of "
                        f"labels ({', '.join(LABEL_COLUMNS)}, or target=COLUMN); it has {', '.join(columns[:10])}")
    present = set(names)
    folder = posixpath.dirname(name)
    labels, problems = {}, []
    for number, (path, value) in enumerate(zip(rows.column(path_column).to_pylist(),
                                               rows.column(label_column).to_pylist()), start=2):
        if path is None or value is None:
            problems.append({"file": f"{name}, row {number}", "reason": "no path or no label"})
            continue
        entry = next((p for p in (posixpath.normpath(posixpath.join(folder, str(path))), str(path),
                                  prefix + str(path)) if p in present), None)
        if entry is None:
            problems.append({"file": str(path)[:200], "reason": f"named in {name} (row {number}) but not in the "
                                                                "archive"})
        else:
            labels[entry] = str(value)
    return Layout(labels, problems)


def _split_entries(path: Path, limits: Limits) -> tuple[list[str], tuple[str, bytes] | None]:
    """The entry names, and the table of labels if the archive holds one at its top (beside its folders)."""
    names, tables = [], []
    for name, blob in entries(path, limits):
        names.append(name)
        if name.lower().endswith(TABLE_EXTENSIONS):
            tables.append((name, blob))
    prefix = _common_folder(names)
    top = [t for t in tables if "/" not in t[0][len(prefix):]]
    if len(top) > 1:
        raise DataError(f"the archive holds several tables at its top ({', '.join(t[0] for t in top[:5])}); keep one "
                        "table of path,label, or none and class folders")
    return [n for n in names if not (top and n == top[0][0])], (top[0] if top else None)


def images(path: Path, limits: Limits, target: str | None = None) -> tuple[Layout, Iterator[tuple[str, bytes]]]:
    """The archive's layout, and its image entries (name, bytes) in archive order."""
    names, table = _split_entries(path, limits)
    found = layout(names, table, target)
    if not found.labels:
        raise DataError("no images in class folders were found: an archive of images holds folders named by class "
                        "(cat/001.png, dog/002.jpg), or a table of path,label beside the images")

    def walk():
        for name, blob in entries(path, limits):
            if name in found.labels:
                yield name, blob
    return found, walk()


def profile_images(path: Path, fmt: str, limits: Limits, target: str | None = None,
                   max_pixels: int = MAX_PIXELS) -> dict[str, Any]:
    """Classes with their counts, the sizes and colour seen, a few sample files per class, and the files that could
    not be read (listed and left out)."""
    found, walk = images(path, limits, target)
    classes: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    colour = grey = 0
    problems = list(found.problems)
    samples: dict[str, list[str]] = {}
    for name, blob in walk:
        try:
            image = open_image(blob, max_pixels)
            image.draft(image.mode, (16, 16))
            image.load()
        except (DataError, OSError, ValueError, SyntaxError) as exc:
            problems.append({"file": name, "reason": str(exc)[:200]})
            continue
        label = found.labels[name]
        classes[label] += 1
        sizes[f"{image.size[0]}x{image.size[1]}"] += 1
        if image.mode in COLOUR_MODES:
            colour += 1
        else:
            grey += 1
        if len(samples.setdefault(label, [])) < SAMPLES_PER_CLASS:
            samples[label].append(name)
    if len(classes) < 2:
        raise DataError(f"the images form {len(classes)} class{'es' if len(classes) != 1 else ''}"
                        f"{' (' + next(iter(classes)) + ')' if classes else ''}; classification needs at least two "
                        "class folders with readable images")
    if len(classes) > MAX_CLASSES:
        raise DataError(f"{len(classes)} classes, more than {MAX_CLASSES}")
    order = class_order(classes)
    rows = sum(classes.values())
    if rows < 8:
        raise DataError(f"{rows} readable images; at least 8 are needed to split train, validation and test")
    return {"format": fmt, "kind": "images", "rows": rows, "target": {"name": "label", "task": "classification",
                                                                      "classes": {c: classes[c] for c in order}},
            "sizes": dict(sizes.most_common(10)), "distinct_sizes": len(sizes),
            "channels": {"colour": colour, "grey": grey}, "samples": {c: samples[c] for c in order},
            "unreadable": problems[:LISTED_PROBLEMS], "unreadable_count": len(problems)}


def default_target(profile: dict[str, Any], size: int | tuple[int, int] | None = None, resize: str = "stretch",
                   channels: int | None = None) -> Target:
    """The spec's choices, else: the most common size when neither side is over DEFAULT_SIDE (else 64 x 64), and
    colour when any image was in colour."""
    if size is None:
        width, height = map(int, next(iter(profile["sizes"])).split("x"))
        size = (height, width) if max(width, height) <= DEFAULT_SIDE else (DEFAULT_SIDE, DEFAULT_SIDE)
    elif isinstance(size, int):
        size = (size, size)
    if channels is None:
        channels = 3 if profile["channels"]["colour"] else 1
    return Target(tuple(size), resize, channels)


def bounded_map(pool: ThreadPoolExecutor, fn, items, ahead: int):
    """pool.map, in order, with at most `ahead` items read and not yet handed back (pool.map reads them all)."""
    pending: deque = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def prepare(path: Path, target: Target, class_names: list[str], limits: Limits, label_target: str | None = None,
            max_pixels: int = MAX_PIXELS, threads: int = 1, progress: Callable[[int], None] | None = None
            ) -> tuple[np.ndarray, np.ndarray, list[dict[str, str]]]:
    """Decode and resize every labelled image: (x uint8 (N, C, H, W), y int64 class indexes, the files left out).
    Images are decoded on `threads` threads (Pillow releases the GIL while it decodes); the order is the archive's."""
    found, walk = images(path, limits, label_target)
    index = {name: i for i, name in enumerate(class_names)}
    problems = list(found.problems)
    xs, ys = [], []

    def one(item: tuple[str, bytes]):
        name, blob = item
        try:
            return name, decode(blob, target, max_pixels), None
        except DataError as exc:
            return name, None, str(exc)

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for done, (name, pixels, problem) in enumerate(bounded_map(pool, one, walk, 16 * max(1, threads)), 1):
            if pixels is None:
                problems.append({"file": name, "reason": problem[:200]})
            elif found.labels[name] not in index:
                problems.append({"file": name, "reason": f"class {found.labels[name]!r} is not one of the "
                                                         "dataset's classes"})
            else:
                xs.append(pixels)
                ys.append(index[found.labels[name]])
            if progress is not None and done % 500 == 0:
                progress(done)
    if not xs:
        raise DataError("no image could be decoded")
    return np.stack(xs), np.asarray(ys, dtype=np.int64), problems
