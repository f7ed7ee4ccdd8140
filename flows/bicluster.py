"""The bicluster stage as a Prefect flow: one task per (model, site, layer), run by Dask.

Tasks receive a lake path, a partition's identity and the parameters (a small dict),
never arrays; each reads its layer from the lake and writes its ``labels`` and
``metrics`` partitions itself (:func:`tnb.bicluster_stage.bicluster_partition`).

Task runner (:func:`make_task_runner`):

- default: a ``distributed.LocalCluster`` sized to the machine, one single-threaded
  worker process per core (at most one per partition), each task's BLAS limited to one
  thread, so workers never oversubscribe the cores;
- ``dask_address="tcp://host:8786"``: the same flow on an existing Dask cluster (the
  workers need ``tnb`` installed, the lake path mounted, and ``PREFECT_API_URL`` pointing
  at a Prefect server they can reach);
- ``serial=True``: one partition at a time in this process (Prefect's thread pool, 1 thread).

Caching: the lake is the cache. A partition's identity is its path, and its manifest
stores the config (every parameter + code version); a task whose outputs are complete
with the same config returns ``status="skipped"`` in milliseconds, a config mismatch is
an error, and a deleted partition is simply redone. Prefect's own result cache is off
(``NO_CACHE``), so nothing keyed by a flow-run id ever decides what is skipped, and no
Prefect result storage has to be shared with remote workers.

Results do not depend on the runner or the number of workers: each partition is seeded
by ``seed`` alone, computed whole by one task, with single-threaded BLAS
(:data:`BLAS_THREADS_PER_TASK`).
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from typing import Any

from . import _env  # noqa: F401  (Prefect settings before prefect is imported)

# isort: split

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from tnb.bicluster_stage import BiclusterParams, bicluster_partition, layer_partitions, null_chunk, partition_state
from tnb.errors import TnbError
from tnb.lake import Lake

from .artifacts import Progress, artifact_prefix


@contextlib.contextmanager
def _blas_threads(n_threads: int | None) -> Iterator[None]:
    """Limit BLAS (and OpenMP) to ``n_threads`` in this process for the block."""
    if not n_threads:
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=n_threads):
        yield


#: OS errors that a retry cannot fix: a missing or unreadable path, a full or read-only disk.
_DETERMINISTIC_ERRNOS = frozenset({errno.ENOENT, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR,
                                   errno.EEXIST, errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.ENAMETOOLONG})


def is_transient_io_error(error: BaseException | None) -> bool:
    """An I/O error that may pass on a retry (a flaky network mount, a timeout), not bad input or lake state."""
    if not isinstance(error, OSError) or isinstance(error, TnbError):
        return False
    return error.errno not in _DETERMINISTIC_ERRNOS


def retry_transient_io(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry transient I/O only, never an error a user must fix."""
    return is_transient_io_error(state.result(raise_on_failure=False))


@task(
    name="list-partitions", retries=2, retry_delay_seconds=1, retry_condition_fn=retry_transient_io,
    cache_policy=NO_CACHE,
)
def list_partitions_task(
    lake: str, models: list[str] | None, sites: list[str] | None, layers: list[int] | None, params: dict[str, Any],
    overwrite: bool = False,
) -> tuple[list[tuple[str, str, int]], list[tuple[str, str, int]]]:
    """The activations partitions to bicluster, and those of them still to do (lake I/O only, hence retries).

    Without ``overwrite``, a partition made with another config raises here, before any
    cluster starts; with it, every partition is to do whatever made it.
    """
    the_lake = Lake(lake)
    bicluster_params = BiclusterParams.from_mapping(params)
    partitions = layer_partitions(the_lake, models, sites, layers)
    if overwrite:
        return partitions, list(partitions)
    states = {p: partition_state(the_lake, *p, bicluster_params) for p in partitions}
    stale = [p for p, state in states.items() if state == "stale"]
    if stale:
        print(f"{len(stale)} partitions are stale (their activations changed since they were computed); "
              f"redoing them: {', '.join(f'{m}/{s}/layer={layer}' for m, s, layer in stale)}")
    return partitions, [p for p, state in states.items() if state != "complete"]


@task(
    name="null-draws",
    task_run_name="null {model}/{site}/layer={layer} draws {first}-{last}",
    cache_policy=NO_CACHE,
)
def null_task(
    lake: str, model: str, site: str, layer: int, params: dict[str, Any], first: int, last: int,
    blas_threads: int | None,
) -> dict[str, Any]:
    """Null draws ``first..last`` of one layer: each a whole grid refit on a matrix without association."""
    import time

    start = time.perf_counter()
    with _blas_threads(blas_threads):
        values = null_chunk(Lake(lake), model, site, layer, BiclusterParams.from_mapping(params), range(first, last + 1))
    return {"first": first, "values": values.tolist(), "seconds": time.perf_counter() - start}


@task(
    name="bicluster-layer",
    task_run_name="bicluster {model}/{site}/layer={layer}",
    cache_policy=NO_CACHE,  # the lake's manifests decide what is skipped; see the module docstring
)
def bicluster_task(
    lake: str, model: str, site: str, layer: int, params: dict[str, Any], overwrite: bool, blas_threads: int | None,
    null_parts: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Bicluster one layer over the grid (+ stability seeds), combine its null, publish labels and metrics."""
    import numpy as np

    null_values = None
    if null_parts:
        parts = sorted(null_parts, key=lambda part: part["first"])
        null_values = np.concatenate([np.asarray(part["values"], dtype=np.float64) for part in parts])
    with _blas_threads(blas_threads):
        outcome = bicluster_partition(
            Lake(lake), model, site, layer, BiclusterParams.from_mapping(params), overwrite=overwrite,
            null_values=null_values,
        )
    result = outcome.as_dict()
    result["null_task_seconds"] = [part["seconds"] for part in null_parts or []]
    return result


def default_workers(n_partitions: int, n_cores: int | None = None) -> int:
    """One worker per core, never more than there are partitions."""
    n_cores = n_cores or os.cpu_count() or 1
    return max(1, min(n_cores, n_partitions))


#: BLAS threads of every bicluster task, whatever runs it. Multi-threaded BLAS sums in a
#: different order (measured: another null mean in the 8th digit, and another k-means
#: labelling at one grid point of a 1000 x 64 layer, with 2 threads vs 1), so a fixed
#: count is what makes results independent of the runner and of the number of workers.
#: Parallelism comes from running partitions side by side instead.
BLAS_THREADS_PER_TASK = 1


def make_task_runner(
    n_partitions: int,
    dask_address: str | None = None,
    n_workers: int | None = None,
    serial: bool = False,
) -> tuple[Any, int]:
    """The task runner for the bicluster tasks, and the BLAS threads each task must use.

    Returns
    -------
    runner : TaskRunner
    blas_threads : int
        Always :data:`BLAS_THREADS_PER_TASK`, applied in the task with threadpoolctl (so on
        remote workers too); local workers also get it as ``OMP_NUM_THREADS``/``MKL_NUM_THREADS``.
    """
    if serial:
        return ThreadPoolTaskRunner(max_workers=1), BLAS_THREADS_PER_TASK
    from prefect_dask import DaskTaskRunner

    if dask_address:
        return DaskTaskRunner(address=dask_address), BLAS_THREADS_PER_TASK
    workers = n_workers or default_workers(n_partitions)
    threads_env = {"OMP_NUM_THREADS": str(BLAS_THREADS_PER_TASK), "MKL_NUM_THREADS": str(BLAS_THREADS_PER_TASK)}
    runner = DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            "n_workers": workers,
            "threads_per_worker": 1,
            "processes": True,
            "env": threads_env,  # set before each worker process starts, so its OpenMP sees it
            "host": "127.0.0.1",  # scheduler and workers on loopback only
            "dashboard_address": "127.0.0.1:0",  # loopback only; a free port: concurrent runs do not collide
        },
    )
    return runner, BLAS_THREADS_PER_TASK


@flow(name="tnb-bicluster-partitions", log_prints=True)
def _bicluster_partitions(
    lake: str,
    partitions: list[tuple[str, str, int]],
    params: dict[str, Any],
    overwrite: bool,
    blas_threads: int | None,
    todo: list[tuple[str, str, int]] | None = None,
    null_chunk_size: int = 25,
) -> list[dict[str, Any]]:
    # Every layer still to do gets its null as separate tasks (chunks of draws), submitted
    # first so that workers start on them at once; its final task waits for its chunks.
    bicluster_params = BiclusterParams.from_mapping(params)
    todo_set = {tuple(p) for p in (partitions if todo is None else todo)}
    null_futures: dict[tuple[str, str, int], list[Any]] = {}
    for model, site, layer in partitions:
        if (model, site, layer) in todo_set:
            null_futures[(model, site, layer)] = [
                null_task.submit(lake, model, site, layer, params, chunk[0], chunk[-1], blas_threads)
                for chunk in bicluster_params.null_chunks(null_chunk_size)
            ]
    futures = [
        bicluster_task.submit(
            lake, model, site, layer, params, overwrite, blas_threads, null_futures.get((model, site, layer))
        )
        for model, site, layer in partitions
    ]
    all_null = [chunk for chunks in null_futures.values() for chunk in chunks]
    progress = Progress(
        f"{artifact_prefix(lake)}-bicluster-progress", f"bicluster stage: null chunks and layers done ({lake})",
        len(all_null) + len(futures),
    )
    # a failed null task leaves its layer's final task unfinished (Prefect's UnfinishedRun, a
    # traceback); wait on the null tasks first so the user sees their own error instead
    for chunk in as_completed(all_null):
        chunk.result()
        progress.advance()
    outcomes = []
    for done, future in enumerate(as_completed(futures), start=1):
        outcome = future.result()
        outcomes.append(outcome)
        progress.advance()
        redone = {"stale": " (stale: its activations changed)", "overwrite": " (overwritten)"}.get(outcome["reason"], "")
        what = (
            f"written{redone} in {outcome['seconds']:.1f}s, {outcome['n_tokens']} x {outcome['n_neurons']}, "
            f"selected {outcome['selected'][0]}x{outcome['selected'][1]}"
            if outcome["status"] == "written"
            else "already complete"
        )
        print(f"[{done}/{len(futures)}] {outcome['model']} {outcome['site']} layer {outcome['layer']}: {what}")
    return sorted(outcomes, key=lambda o: (o["model"], o["site"], o["layer"]))


@flow(name="tnb-bicluster", log_prints=True)
def bicluster_flow(
    lake: str = "lake",
    models: list[str] | None = None,
    sites: list[str] | None = None,
    layers: list[int] | None = None,
    bicluster: dict[str, Any] | None = None,
    overwrite: bool = False,
    dask_address: str | None = None,
    n_workers: int | None = None,
    serial: bool = False,
    null_chunk_size: int = 25,
) -> list[dict[str, Any]]:
    """Bicluster every matching activations partition of the lake, in parallel.

    Parameters
    ----------
    lake : str
        Lake root.
    models, sites, layers : list, optional
        Which activations partitions (default: every one in the lake).
    bicluster : dict, optional
        Fields of :class:`tnb.bicluster_stage.BiclusterParams` (grid, input, null, n_null,
        n_seeds, selection, seed, drop_first, ...); missing ones take its defaults.
    overwrite : bool
        Redo partitions that are already complete.
    dask_address : str, optional
        Scheduler of an existing Dask cluster; default: a local cluster sized to the machine.
    n_workers : int, optional
        Workers of the local cluster (default: one per core, at most one per partition).
    serial : bool
        One partition at a time in this process, no Dask.
    null_chunk_size : int
        Null draws per Dask task (a layer's null runs as ceil(n_null / null_chunk_size) tasks).

    Returns
    -------
    list of dict
        One :class:`tnb.bicluster_stage.PartitionOutcome` per partition, sorted, with the
        seconds of each of its null tasks (``null_task_seconds``).
    """
    params = BiclusterParams.from_mapping(bicluster or {})
    params.null_chunks(null_chunk_size)  # validates the chunk size before any cluster starts
    partitions, todo = list_partitions_task(lake, models, sites, layers, params.config(), overwrite)
    if not todo:
        print(f"all {len(partitions)} partitions already complete; nothing to bicluster")
        serial = True  # no cluster to start for tasks that only confirm the skip
    n_tasks = len(todo) * (1 + len(params.null_chunks(null_chunk_size)))
    runner, blas_threads = make_task_runner(n_tasks, dask_address, n_workers, serial)
    print(
        f"biclustering {len(todo)} of {len(partitions)} partitions ({params.n_null} null draws each, in chunks "
        f"of {null_chunk_size}) on {_describe(runner, blas_threads)}"
    )
    local_cluster = not serial and not dask_address
    with local_cluster_config() if local_cluster else contextlib.nullcontext():
        return _bicluster_partitions.with_options(task_runner=runner)(
            lake, [(str(m), str(s), int(n)) for m, s, n in partitions], params.config(), overwrite, blas_threads,
            [(str(m), str(s), int(n)) for m, s, n in todo], null_chunk_size,
        )


#: Dask settings of the local cluster tnb starts (an existing cluster keeps its own). Its
#: housekeeping otherwise wakes ~400 times a second (event-loop ticks every 20 ms in the
#: scheduler, nannies and workers, each worker's statistical profiler every 10 ms, memory
#: monitors every 100 ms, work stealing every 100 ms) and, on a machine whose every core runs
#: a worker, preempts the workers: the cluster's parent process took 5-7% of a core (top,
#: 2 workers on 2 cores), 1.2-1.6% with these. The cost: no per-task profiles in the
#: dashboard, memory limits checked every second.
LOCAL_CLUSTER_CONFIG: dict[str, Any] = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.worker.memory.monitor-interval": "1s",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.scheduler.work-stealing-interval": "1s",
}


def local_cluster_config() -> Any:
    """``dask.config.set(LOCAL_CLUSTER_CONFIG)``: in force while the local cluster starts and runs."""
    import dask

    return dask.config.set(LOCAL_CLUSTER_CONFIG)


def _describe(runner: Any, blas_threads: int | None) -> str:
    if isinstance(runner, ThreadPoolTaskRunner):
        return "this process, one partition at a time, single-threaded"
    if getattr(runner, "address", None) is None:
        kwargs = runner.cluster_kwargs
        return f"a local Dask cluster of {kwargs['n_workers']} single-threaded workers"
    return f"the Dask cluster at {getattr(runner, 'address', '?')}"
