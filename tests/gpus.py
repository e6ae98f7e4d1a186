"""A stand-in for nvidia-smi, for the tests of how trainq looks for GPUs on a machine that has none."""

from __future__ import annotations

from pathlib import Path


def fake_nvidia_smi(folder: Path, count: int, status: int = 0) -> Path:
    """Write an `nvidia-smi` into `folder` that lists `count` GPU indices, notes its arguments in `folder/calls`, and
    exits with `status`; return the folder, to go first on PATH."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = "".join(f"{i}\\n" for i in range(count))
    script = folder / "nvidia-smi"
    script.write_text(f"#!/bin/sh\necho \"$@\" >> {folder / 'calls'}\nprintf '{rows}'\nexit {status}\n")
    script.chmod(0o755)
    return folder
