"""The grid on Ray (``grid.engine: ray``): each stack of a rung is one Ray Core task, so the stacks of a rung run in
parallel, one per GPU or on ``grid.ray.cpus_per_stack`` CPUs each; the driver (:class:`.grid_run.GridRun`) keeps the
records, ranks across stacks when all of them reached the rung, and prunes, exactly as with the local engine.

A stack is the unit, not a configuration: Ray Tune's trial schedulers stop whole trials and cannot prune members
inside a stack. The data reaches the workers once, through the object store (``grid.ray.data: object_store``) or
from the data root on storage every worker sees (``data_root``). A stack whose worker process dies is run again by
Ray (``grid.ray.max_retries``) from the same inputs, so its results equal an uninterrupted run's. Workers write
their TensorBoard files to the driver's (absolute) paths: on a cluster of several machines ``paths.runs_dir``
should be shared storage. Ray is an optional extra: ``pip install -e '.[ray]'``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator

import torch

from ..config import Config
from ..core import trees
from ..data.dataset import Dataset
from ..errors import ConfigError
from .run import RungJob, RungOutcome, train_rung

INSTALL_HINT = "pip install -e '.[ray]' (or pip install 'ray>=2.40')"
CRASH_ONCE = "CIFAR100_TEST_CRASH_ONCE"  # tests: a file path; the first task that finds it missing creates it and
# kills its own worker process, as a machine that goes away would


def require_ray():
    """The ``ray`` module, or a one-line error that says how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"grid.engine ray: Ray is not installed; {INSTALL_HINT}") from None
    return ray


def _cpu(tree):
    return trees.to_cpu(tree)


def _run_stack(job: RungJob, data: Dataset | None, data_root: str | None, threads: int) -> RungOutcome:
    """A worker's task: set the process up, get the data, train the stack to the rung; trees back on the CPU."""
    marker = os.environ.get(CRASH_ONCE)
    if marker and not Path(marker).exists():
        Path(marker).touch()
        os._exit(1)
    from ..runtime.backend import Backend
    from ..data.dataset import load_dataset
    from ..runtime.from_config import data_spec

    gpu = torch.cuda.is_available() and bool(_ray_gpu_ids())
    device = torch.device("cuda") if gpu else torch.device("cpu")
    torch.set_num_threads(threads)
    if data is None:  # the job's config is the grid's (its grid.max_train subset already applied)
        data = load_dataset(data_spec(job.cfg), data_root)
    backend = Backend.create(job.cfg, device)
    job.trees = None if job.trees is None else trees.to(job.trees, device)
    out = train_rung(job, data.to(device), backend, progress=False, log=lambda line: print(line, flush=True))
    return RungOutcome(out.record, _cpu(out.trees))


def _ray_gpu_ids() -> list:
    import ray

    return ray.get_gpu_ids()


def reachable(address: str, timeout: float) -> str | None:
    """None when something accepts TCP connections at ``address`` ("host:port", "ray://host:port") within
    ``timeout`` seconds, else why not (Ray itself retries an address that does not answer for minutes)."""
    import socket

    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        return "not of the form host:port"
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return None


def connect(ray, address: str | None, timeout: float) -> None:
    """``ray.init`` on ``address`` (None: a local cluster), bounded: a cluster that cannot be reached is one line,
    exit 2, after at most ``timeout`` seconds."""
    if address not in (None, "auto", "local"):
        why = reachable(address, timeout)
        if why is not None:
            raise ConfigError(f"grid.ray.address {address}: no Ray cluster reachable there within {timeout:g} s "
                              f"({why})")
    try:
        ray.init(address=address, log_to_driver=True, include_dashboard=False)
    except (ConnectionError, TimeoutError) as exc:
        raise ConfigError(f"grid.ray.address {address}: cannot join the Ray cluster "
                          f"({' '.join(str(exc).split())[:200]})") from None


class RayEngine:
    """Runs the jobs of a rung as parallel Ray tasks and yields each as it finishes (its record is written then)."""

    def __init__(self, cfg: Config, data: Dataset, data_root: str | None, log: Callable[[str], None] = print):
        ray = self.ray = require_ray()
        rc = cfg.grid.ray
        if not ray.is_initialized():
            connect(ray, rc.address, rc.connect_timeout)
        gpus = ray.cluster_resources().get("GPU", 0)
        self.options = {"num_gpus": 1} if gpus else {"num_cpus": rc.cpus_per_stack}
        self.options["max_retries"] = rc.max_retries
        self.threads = rc.cpus_per_stack
        self.data_root = str(Path(data_root).resolve()) if data_root else None
        self.data_ref = ray.put(data.to("cpu")) if rc.data == "object_store" else None
        self.task = ray.remote(_run_stack)
        res = ray.cluster_resources()
        log(f"ray: cluster {res.get('CPU', 0):g} CPUs, {gpus:g} GPUs; each stack one task with "
            + ("1 GPU" if gpus else f"{rc.cpus_per_stack} CPU(s)") + f", up to {rc.max_retries} retries, data via "
            + rc.data.replace("_", " "))

    def run(self, jobs: list[RungJob]) -> Iterator[tuple[RungJob, RungOutcome]]:
        ray = self.ray
        for job in jobs:
            job.trees = None if job.trees is None else _cpu(job.trees)
            job.events = None if job.events is None else [Path(p).resolve() for p in job.events]
        pending = {self.task.options(**self.options).remote(job, self.data_ref, self.data_root, self.threads): job
                   for job in jobs}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(done[0])
            yield job, ray.get(done[0])
