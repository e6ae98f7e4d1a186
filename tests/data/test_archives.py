"""Archives are hostile until proven otherwise; images are decoded at their target size, bombs refused undecoded.
These are the security tests of the data path: nothing is ever written outside memory, and every refusal says why."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainq.data.archive import Limits, entries
from trainq.data.formats import DataError
from trainq.data.images import Target, decode, default_target, prepare, profile_images


def png(colour=(200, 30, 30), size=(20, 16), mode="RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, colour if mode == "RGB" else colour[0]).save(out, "PNG")
    return out.getvalue()


def jpeg(size=(600, 500)) -> bytes:
    rng = np.random.default_rng(0)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(out, "JPEG", quality=85)
    return out.getvalue()


def write_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return path


def write_tar(path: Path, members: list[tarfile.TarInfo], data: dict[str, bytes] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as t:
        for m in members:
            blob = (data or {}).get(m.name)
            if blob is not None:
                m.size = len(blob)
            t.addfile(m, io.BytesIO(blob) if blob is not None else None)
    return path


@pytest.mark.parametrize("name, fragment", [("../evil.png", "climbs out"), ("a/../../evil.png", "climbs out"),
                                            ("/etc/passwd", "absolute path"), ("C:/x.png", "absolute path")])
def test_a_zip_entry_named_outside_the_archive_is_refused(tmp_path, name, fragment):
    path = write_zip(tmp_path / "a.zip", {"cat/1.png": png(), name: png()})
    with pytest.raises(DataError, match=fragment):
        list(entries(path))


@pytest.mark.parametrize("kind, fragment", [(tarfile.SYMTYPE, "symbolic link"), (tarfile.LNKTYPE, "hard link"),
                                            (tarfile.CHRTYPE, "not a regular file")])
def test_links_and_devices_in_a_tar_are_refused(tmp_path, kind, fragment):
    link = tarfile.TarInfo("cat/link.png")
    link.type, link.linkname = kind, "/etc/passwd"
    path = write_tar(tmp_path / "a.tgz", [tarfile.TarInfo("cat/1.png"), link], {"cat/1.png": png()})
    with pytest.raises(DataError, match=fragment):
        list(entries(path))


def test_a_zip_bomb_is_refused_before_it_is_inflated(tmp_path):
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("cat/big.png", "w", force_zip64=True) as f:
            for _ in range(64):
                f.write(bytes(1 << 20))  # 64 MiB of zeros, about 64 KiB compressed
    assert path.stat().st_size < 1 << 20
    with pytest.raises(DataError, match="zip bomb"):
        list(entries(path))


def test_an_archive_inflating_past_the_limit_is_refused(tmp_path):
    path = write_tar(tmp_path / "a.tgz", [tarfile.TarInfo(f"cat/{i}.png") for i in range(5)],
                     {f"cat/{i}.png": bytes(3000) for i in range(5)})
    with pytest.raises(DataError, match="inflates past"):
        list(entries(path, Limits(max_bytes=10_000)))


def test_junk_is_skipped_and_the_zipped_folder_is_stripped(tmp_path):
    files = {"pets/cat/1.png": png(), "pets/cat/2.png": png(), "pets/dog/1.png": png((0, 0, 255)),
             "pets/dog/2.png": png((0, 0, 255)), "__MACOSX/pets/._1.png": b"junk", "pets/.DS_Store": b"junk",
             "pets/notes.txt": b"hello", "pets/loose.png": png()}
    files.update({f"pets/{c}/{i}.png": png() for c in ("cat", "dog") for i in range(3, 6)})
    profile = profile_images(write_zip(tmp_path / "pets.zip", files), "zip", Limits())
    assert profile["target"]["classes"] == {"cat": 5, "dog": 5}
    assert {p["file"] for p in profile["unreadable"]} == {"pets/notes.txt", "pets/loose.png"}
    assert profile["sizes"] == {"20x16": 10} and profile["channels"] == {"colour": 10, "grey": 0}
    assert default_target(profile) == Target((16, 20), "stretch", 3)


def test_an_image_bomb_is_refused_from_its_header_and_a_broken_file_is_listed(tmp_path):
    big = io.BytesIO()
    Image.new("1", (5000, 5000)).save(big, "PNG")  # 25 M pixels in a few KiB
    files = {f"a/{i}.png": png() for i in range(5)} | {f"b/{i}.png": png() for i in range(5)}
    files["a/bomb.png"] = big.getvalue()
    files["b/cut.png"] = png()[:40]
    profile = profile_images(write_zip(tmp_path / "x.zip", files), "zip", Limits(), max_pixels=1_000_000)
    problems = {p["file"]: p["reason"] for p in profile["unreadable"]}
    assert "refused before decoding" in problems["a/bomb.png"] and "b/cut.png" in problems
    assert profile["rows"] == 10
    with pytest.raises(DataError, match="refused before decoding"):
        decode(big.getvalue(), Target((8, 8)), max_pixels=1_000_000)


def test_a_table_of_paths_and_labels_inside_the_archive(tmp_path):
    files = {f"img/{i}.png": png((i * 20, 0, 0)) for i in range(10)}
    files["labels.csv"] = ("path,label\n" + "".join(f"img/{i}.png,{'odd' if i % 2 else 'even'}\n"
                                                    for i in range(10)) + "img/missing.png,odd\n").encode()
    path = write_zip(tmp_path / "t.zip", files)
    profile = profile_images(path, "zip", Limits())
    assert profile["target"]["classes"] == {"even": 5, "odd": 5}
    assert profile["unreadable"][0]["file"] == "img/missing.png"
    x, y, _ = prepare(path, Target((8, 8), "stretch", 1), ["even", "odd"], Limits())
    assert x.shape == (10, 1, 8, 8) and x.dtype == np.uint8 and y.tolist() == [0, 1] * 5


@pytest.mark.parametrize("resize, expected", [("stretch", (3, 32, 32)), ("crop", (3, 32, 32)), ("pad", (3, 32, 32))])
def test_a_photo_is_decoded_at_the_target_size(resize, expected):
    pixels = decode(jpeg(), Target((32, 32), resize, 3))
    assert pixels.shape == expected and pixels.dtype == np.uint8
    grey = decode(png(mode="L", colour=(77, 0, 0)), Target((8, 8), "stretch", 1))
    assert grey.shape == (1, 8, 8) and int(grey.mean()) == 77
    wide = decode(png(size=(40, 10)), Target((10, 10), "pad", 3))
    assert wide[:, :3].max() == 0 and wide[:, 5].max() > 0  # letterboxed: black bands above and below
