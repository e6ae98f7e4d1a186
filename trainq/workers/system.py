"""What the machine did while a job trained: a sampler thread beside the training thread that reads the worker
process (with its children: data-loading processes) every few seconds and reports `sys/...` series through the job's
reporters, as any metric: CPU % (100 = one core busy), resident memory, the share of the time the training loop
waited for data, and a GPU's utilisation and reserved memory where the job has one. Nothing here touches the
training thread or syncs the device: the GPU's figures come from the driver (NVML) and the caching allocator."""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger(__name__)

SERIES = ("sys/cpu_percent", "sys/memory_mb", "sys/data_wait_share", "sys/gpu_utilization", "sys/gpu_memory_mb")


class SystemSampler:
    def __init__(self, reporters, device=None, every: float = 5.0):
        """`reporters()`: the reporters of the jobs training at this moment (each sample goes to each of them)."""
        self.reporters, self.device, self.every = reporters, device, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="system-sampler", daemon=True)

    def __enter__(self) -> "SystemSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=self.every + 5)

    def _run(self) -> None:
        try:
            import psutil
        except ImportError:  # an installation without psutil charts no system series; training is unaffected
            log.warning("psutil is not installed: no system metrics")
            return
        from trainq.models.engine import DATA_WAIT

        me = psutil.Process()
        processes: dict[int, psutil.Process] = {}
        last_wait, last_at = DATA_WAIT.seconds, time.perf_counter()
        stopped, sampled = False, False
        while not stopped:
            family = [me, *me.children(recursive=True)]
            for p in family:  # cpu_percent measures from the previous call on the same object: keep them
                processes.setdefault(p.pid, p).cpu_percent(None)
            # the last sample is taken when training ends, so a run shorter than the interval has one too
            stopped = self._stop.wait(self.every)
            if stopped and sampled and time.perf_counter() - last_at < 0.2:
                return
            values = self.sample(processes, family)
            now, waited = time.perf_counter(), DATA_WAIT.seconds
            values["sys/data_wait_share"] = min(1.0, max(0.0, (waited - last_wait) / max(now - last_at, 1e-9)))
            last_wait, last_at, sampled = waited, now, True
            values.update(self.gpu())
            stamp = int(time.time())  # the step of a system point: seconds since 1970, one per sample and attempt
            for reporter in self.reporters():
                for name, value in values.items():
                    reporter.metric(name, stamp, reporter.epoch, value)

    @staticmethod
    def sample(processes: dict, family: list) -> dict[str, float]:
        import psutil

        cpu = rss = 0.0
        for p in family:
            try:
                cpu += processes[p.pid].cpu_percent(None)
                rss += p.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied, KeyError):
                continue
        return {"sys/cpu_percent": cpu, "sys/memory_mb": rss / 2**20}

    def gpu(self) -> dict[str, float]:
        if self.device is None or getattr(self.device, "type", "cpu") != "cuda":
            return {}
        import torch

        out = {"sys/gpu_memory_mb": torch.cuda.memory_reserved(self.device) / 2**20}
        try:
            out["sys/gpu_utilization"] = float(torch.cuda.utilization(self.device))  # NVML, when pynvml is there
        except Exception:  # noqa: BLE001 - no NVML: memory only
            pass
        return out
