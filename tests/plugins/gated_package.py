"""A layer package as a team would publish it, built here as a real wheel and installed with pip into a folder.

`trainq-gated` offers one layer type, `gated` (a gated linear unit: a dense layer times the sigmoid of another), and
one entry point trainq must refuse: `dense`, which would shadow the built-in layer of that name.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

NAME, VERSION = "trainq-gated", "1.0.0"

SPEC = '''
from typing import Literal

from pydantic import Field

from trainq.extensions import LayerFields, LayerType, Shape, ShapeError


class GatedSpec(LayerFields):
    """A gated linear unit: a dense layer of `units` times the sigmoid of a second one."""

    type: Literal["gated"]
    units: int = Field(gt=0, le=4096)

    def output_shape(self, shape: Shape) -> Shape:
        if len(shape) != 1:
            raise ShapeError(f"gated needs a vector of features, got {list(shape)}: add a flatten layer before it")
        return (self.units,)

    def param_count(self, shape: Shape) -> int:
        return 2 * (shape[0] * self.units + self.units)


def build(spec: GatedSpec, shape: Shape):
    from trainq_gated.modules import Gated

    return Gated(shape[0], spec.units)


layer = LayerType(spec=GatedSpec, build=build)


class DenseSpec(LayerFields):
    type: Literal["dense"]
    units: int

    def output_shape(self, shape: Shape) -> Shape:
        return (self.units,)

    def param_count(self, shape: Shape) -> int:
        return 0


shadow = LayerType(spec=DenseSpec, build=build)
'''

MODULES = '''
import torch


class Gated(torch.nn.Module):
    def __init__(self, features: int, units: int):
        super().__init__()
        self.value = torch.nn.Linear(features, units)
        self.gate = torch.nn.Linear(features, units)

    def forward(self, x):
        return self.value(x) * torch.sigmoid(self.gate(x))
'''

ENTRY_POINTS = "[trainq.layers]\ngated = trainq_gated:layer\ndense = trainq_gated:shadow\n"


def build_wheel(folder: Path) -> Path:
    """The package as a wheel file (what `python -m build` would write), by the wheel format's rules."""
    dist = f"trainq_gated-{VERSION}.dist-info"
    files = {
        "trainq_gated/__init__.py": SPEC,
        "trainq_gated/modules.py": MODULES,
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {NAME}\nVersion: {VERSION}\nRequires-Dist: trainq\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{dist}/entry_points.txt": ENTRY_POINTS,
    }
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(text.encode())}")
    files[f"{dist}/RECORD"] = "\n".join(record + [f"{dist}/RECORD,,"]) + "\n"
    wheel = folder / f"trainq_gated-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return wheel


def install(folder: Path) -> Path:
    """pip installs the wheel into a folder of its own (no index, no dependencies): that folder on PYTHONPATH is a
    process with the package installed, and a process without it has not."""
    target = folder / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target", str(target),
                    str(build_wheel(folder))], check=True, capture_output=True, timeout=120)
    return target
