"""Zip and tar archives read as hostile until proven otherwise.

An entry is only ever read into memory, never extracted to a path, and is refused (DataError naming it) when its name
is absolute or climbs out with '..', when it is a symbolic or hard link or a device, when a zip entry inflates more
than `max_ratio` times (a zip bomb), or when the entries together would inflate past `max_bytes`. Junk that archivers
add (__MACOSX/, .DS_Store, hidden files) is skipped.
"""

from __future__ import annotations

import posixpath
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from trainq.data.formats import DataError

MAX_RATIO = 200  # a zip entry (past 1 MiB) that inflates more than this many times is refused
MAX_ENTRIES = 2_000_000
JUNK_NAMES = {".DS_Store", "Thumbs.db", "desktop.ini"}


@dataclass(frozen=True)
class Limits:
    max_bytes: int = 20 * 2**30  # uncompressed, all entries together
    max_ratio: int = MAX_RATIO
    max_entries: int = MAX_ENTRIES


def clean_name(name: str) -> str | None:
    """The entry's path inside the archive, normalized; None for junk to skip. Raises DataError for a name that
    points outside the archive."""
    raw = name.replace("\\", "/")
    if raw.startswith("/") or (len(raw) > 1 and raw[1] == ":"):
        raise DataError(f"archive entry {name[:200]!r} has an absolute path; refused (entries must be relative)")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise DataError(f"archive entry {name[:200]!r} climbs out of the archive with '..'; refused")
    if not parts or parts[0] == "__MACOSX" or any(p.startswith(".") for p in parts) or parts[-1] in JUNK_NAMES:
        return None
    return posixpath.join(*parts)


def entries(path: Path, limits: Limits = Limits()) -> Iterator[tuple[str, bytes]]:
    """(clean name, bytes) of every regular file in a zip or tar (gzip, bzip2, xz), in the archive's order."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        yield from _zip_entries(path, limits)
    else:
        yield from _tar_entries(path, limits)


def _zip_entries(path: Path, limits: Limits) -> Iterator[tuple[str, bytes]]:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"not a readable zip file: {exc}") from None
    with archive:
        infos = archive.infolist()
        if len(infos) > limits.max_entries:
            raise DataError(f"the archive holds {len(infos)} entries, more than {limits.max_entries}")
        total = 0
        for info in infos:
            if info.is_dir():
                continue
            name = clean_name(info.filename)
            if (info.external_attr >> 16) & 0o170000 == 0o120000:  # a symbolic link stored by a Unix zip
                raise DataError(f"archive entry {info.filename[:200]!r} is a symbolic link; refused")
            if name is None:
                continue
            if info.file_size > 2**20 and info.file_size > limits.max_ratio * max(info.compress_size, 1):
                raise DataError(f"archive entry {name!r} inflates {info.file_size // max(info.compress_size, 1)} "
                                f"times ({info.file_size} bytes): a zip bomb, refused")
            total += info.file_size
            if total > limits.max_bytes:
                raise DataError(f"the archive inflates past {limits.max_bytes // 2**20} MiB; refused "
                                "(TRAINQ_MAX_ARCHIVE_MB)")
            try:
                with archive.open(info) as f:
                    data = f.read(info.file_size + 1)  # zipfile stops at the declared size and checks the CRC
            except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as exc:
                raise DataError(f"archive entry {name!r} cannot be read: {exc}") from None
            if len(data) > info.file_size:
                raise DataError(f"archive entry {name!r} holds more than it declares; refused")
            yield name, data


def _tar_entries(path: Path, limits: Limits) -> Iterator[tuple[str, bytes]]:
    try:
        archive = tarfile.open(path, mode="r|*")  # a stream: a compressed tar is inflated once, front to back
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"not a readable zip or tar archive: {exc}") from None
    total = count = 0
    with archive:
        try:
            for member in archive:
                count += 1
                if count > limits.max_entries:
                    raise DataError(f"the archive holds more than {limits.max_entries} entries")
                if member.isdir():
                    continue
                if member.issym() or member.islnk():
                    raise DataError(f"archive entry {member.name[:200]!r} is a {'symbolic' if member.issym() else 'hard'}"
                                    f" link (to {member.linkname[:200]!r}); refused")
                if not member.isfile():
                    raise DataError(f"archive entry {member.name[:200]!r} is not a regular file (a device or a "
                                    "pipe); refused")
                name = clean_name(member.name)
                if name is None:
                    continue
                total += member.size
                if total > limits.max_bytes:
                    raise DataError(f"the archive inflates past {limits.max_bytes // 2**20} MiB; refused "
                                    "(TRAINQ_MAX_ARCHIVE_MB)")
                f = archive.extractfile(member)
                yield name, f.read() if f is not None else b""
        except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
            raise DataError(f"the archive is damaged or cut off: {exc}") from None
