"""Run every benchmark and print the table for the README, with the date and the command."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = ["engine_speed.py", "service_overhead.py", "queue_latency.py", "api_throughput.py", "metric_ingestion.py",
           "scale.py", "dashboard.py", "predict.py", "packed.py", "packed_sweep.py", "scale_sim.py"]


def main() -> None:
    rows, log = [], []
    for script in SCRIPTS:
        result = subprocess.run([sys.executable, script], cwd=HERE, capture_output=True, text=True)
        out = result.stdout + result.stderr
        log.append(f"--- {script} (exit {result.returncode})\n{out.strip()}")
        rows += [line for line in result.stdout.splitlines() if line.startswith("| ")]
    print("\n\n".join(log))
    print(f"\n`python bench/run_all.py` on {datetime.date.today()}, {platform.machine()}, {os.cpu_count()} cores:\n")
    print("| figure | baseline (same run) | trainq | ratio | target |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
