"""The example specs shipped in the repository's examples/ folder, for the dashboard's submit page and the API."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import yaml

# A checkout (or editable install) has them beside the package; the Docker image sets TRAINQ_EXAMPLES_DIR.
FOLDER = Path(os.environ.get("TRAINQ_EXAMPLES_DIR") or Path(__file__).resolve().parents[2] / "examples")


@lru_cache(maxsize=1)
def load_examples() -> list[dict]:
    out = []
    for path in sorted(FOLDER.glob("*.yaml")) if FOLDER.is_dir() else ():
        text = path.read_text()
        out.append({"name": path.stem, "yaml": text, "spec": yaml.safe_load(text)})
    return out
