"""Data-parallel training (DDP) of one job on several devices of one worker: one process per replica.

The engine hands over the function that trains one replica (`run`, its `_fit`): this module is the process plumbing
around it and imports nothing of the engine's. This process is rank 0: it keeps the callbacks (reporting,
checkpoints, pruning) and the interrupt. The other replicas are started with the spawn method (never fork: the parent
may hold CUDA state from an earlier job) and train the same spec with no callbacks. Every replica draws the same
permutation and takes its shard of each batch; DDP averages the gradients, so the run learns what one process would
(to float rounding). Every replica evaluates the same validation split with the same weights, so early stopping
decides the same everywhere; cancels and pruning come from rank 0 by a broadcast at each epoch's end.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from trainq.models.spec import JobSpec

# A replica that died leaves the others waiting in a collective: give up after this long instead of the default 30 min.
COLLECTIVE_TIMEOUT = timedelta(minutes=5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _device_for(kind: str, rank: int) -> torch.device:
    return torch.device("cuda", rank) if kind == "cuda" else torch.device("cpu")


def _join(backend: str, address: str, rank: int, world: int, device: torch.device) -> None:
    """Join the job's process group. On CUDA the replica's GPU is made current and named to NCCL first, as PyTorch's
    DDP guide asks: NCCL forms its communicator on that GPU at once, and a barrier need not guess the rank's GPU
    ("using GPU 0 to perform barrier as devices used by this process are currently unknown": a wrong guess hangs)."""
    on_gpu = device.type == "cuda"
    if on_gpu:
        torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method=address, rank=rank, world_size=world, timeout=COLLECTIVE_TIMEOUT,
                            device_id=device if on_gpu else None)


def _replica(rank: int, world: int, address: str, backend: str, kind: str, run: Callable, spec_json: dict[str, Any],
             resume: bytes | None, arrays, threads: int) -> None:
    torch.set_num_threads(threads)
    device = _device_for(kind, rank)
    _join(backend, address, rank, world, device)
    try:
        run(JobSpec.model_validate(spec_json), device=device, callbacks=(), checkpoint_sink=None,
             resume=resume, interrupt=None, arrays=arrays, rank=rank, world=world)
        dist.barrier()  # leave together: a rank tearing down while another still talks kills it (std::terminate)
    finally:
        dist.destroy_process_group()


def fit_data_parallel(run: Callable, spec: JobSpec, world: int, *, kind: str, callbacks=(), checkpoint_sink=None,
                      resume=None, interrupt=None, arrays=None, threads: int | None = None):
    """Train `spec` on `world` replicas of device `kind` (cuda or cpu); `run` trains one replica (the engine's `_fit`,
    a module-level function, so the spawned replicas can import it by name)."""
    if kind == "cuda" and torch.cuda.device_count() < world:
        raise RuntimeError(f"the job asks for {world} GPUs; this worker sees {torch.cuda.device_count()}")
    backend = "nccl" if kind == "cuda" else "gloo"
    address = f"tcp://127.0.0.1:{_free_port()}"
    share = threads or max(1, (os.cpu_count() or 1) // world)
    context = mp.get_context("spawn")
    spec_json = spec.model_dump(mode="json")
    replicas = [context.Process(target=_replica, args=(rank, world, address, backend, kind, run, spec_json,
                                                       resume, arrays, share), name=f"trainq-replica-{rank}")
                for rank in range(1, world)]
    for process in replicas:
        process.start()
    previous = torch.get_num_threads()
    torch.set_num_threads(share)
    ok = False
    try:
        device = _device_for(kind, 0)
        _join(backend, address, 0, world, device)
        try:
            result = run(spec, device=device, callbacks=callbacks, checkpoint_sink=checkpoint_sink,
                          resume=resume, interrupt=interrupt, arrays=arrays, rank=0, world=world)
            dist.barrier()
        finally:
            dist.destroy_process_group()
        ok = True
        return result
    finally:
        torch.set_num_threads(previous)
        for process in replicas:
            process.join(timeout=60 if ok else 5)
            if process.is_alive():
                process.kill()
                process.join()
        failed = [p.name for p in replicas if p.exitcode not in (0, None)]
        if ok and failed:
            raise RuntimeError(f"data-parallel replicas failed: {failed}")


