"""The package's one build step beyond setuptools' own: the dashboard's chart library (uPlot) comes from the npm
registry into the package, so `pip install .`, `pip install -e .`, a wheel and an sdist all carry it. Without it every
chart of the dashboard is blank, so a build that cannot fetch it fails, saying how to fix that.

Everything else about the package is in pyproject.toml."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ASSETS = Path(__file__).resolve().parent / "trainq" / "service" / "assets"
NEEDED = ("node_modules/uplot/dist/uPlot.iife.min.js", "node_modules/uplot/dist/uPlot.min.css")


def fetch_assets() -> None:
    """Install the locked front-end packages (package-lock.json) with npm, unless they are there already."""
    if all((ASSETS / name).is_file() for name in NEEDED):
        return
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit(
            "trainq's dashboard draws its charts with uPlot, which the build installs from the npm registry, and npm "
            "is not on PATH. Install Node.js (it brings npm; on Debian: apt-get install npm) and install trainq "
            f"again, or run `npm ci` in {ASSETS} first.")
    try:
        subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=ASSETS, check=True)
    except subprocess.CalledProcessError as exc:
        raise SystemExit(f"`npm ci` in {ASSETS} failed (exit {exc.returncode}); the dashboard's charts need it. "
                         "Check that the npm registry is reachable, then install trainq again.") from None
    missing = [name for name in NEEDED if not (ASSETS / name).is_file()]
    if missing:
        raise SystemExit(f"`npm ci` ran but {missing} are missing under {ASSETS}")


class BuildWithAssets(build_py):
    def run(self) -> None:
        fetch_assets()
        super().run()


setup(cmdclass={"build_py": BuildWithAssets})
