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
import os
from collections.abc import Iterator, Sequence
from typing import Any

from flows import _env  # noqa: F401  (Prefect settings before prefect is imported)

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from tnb.bicluster_stage import BiclusterParams, bicluster_partition, is_done, layer_partitions
from tnb.lake import Lake


@contextlib.contextmanager
def _blas_threads(n_threads: int | None) -> Iterator[None]:
    """Limit BLAS (and OpenMP) to ``n_threads`` in this process for the block."""
    if not n_threads:
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=n_threads):
        yield


def _retry_on_os_error(task: Any, task_run: Any, state: Any) -> bool:
    """Retry transient I/O (a flaky network mount), never a lake-state error a user must fix."""
    error = state.result(raise_on_failure=False)
    return isinstance(error, OSError)


@task(
    name="list-partitions", retries=2, retry_delay_seconds=1, retry_condition_fn=_retry_on_os_error,
    cache_policy=NO_CACHE,
)
def list_partitions_task(
    lake: str, models: list[str] | None, sites: list[str] | None, layers: list[int] | None, params: dict[str, Any]
) -> tuple[list[tuple[str, str, int]], list[tuple[str, str, int]]]:
    """The activations partitions to bicluster, and those of them still to do (lake I/O only, hence retries).

    A partition made with another config raises here, before any cluster starts.
    """
    the_lake = Lake(lake)
    bicluster_params = BiclusterParams.from_mapping(params)
    partitions = layer_partitions(the_lake, models, sites, layers)
    pending = [p for p in partitions if not is_done(the_lake, *p, bicluster_params)]
    return partitions, pending


@task(
    name="bicluster-layer",
    task_run_name="bicluster {model}/{site}/layer={layer}",
    cache_policy=NO_CACHE,  # the lake's manifests decide what is skipped; see the module docstring
)
def bicluster_task(
    lake: str, model: str, site: str, layer: int, params: dict[str, Any], overwrite: bool, blas_threads: int | None
) -> dict[str, Any]:
    """Bicluster one layer over the grid and publish its labels and metrics (no retries: compute)."""
    with _blas_threads(blas_threads):
        outcome = bicluster_partition(Lake(lake), model, site, layer, BiclusterParams.from_mapping(params), overwrite=overwrite)
    return outcome.as_dict()


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
            "dashboard_address": ":0",  # a free port: concurrent runs do not collide
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
) -> list[dict[str, Any]]:
    futures = [
        bicluster_task.submit(lake, model, site, layer, params, overwrite, blas_threads)
        for model, site, layer in partitions
    ]
    outcomes = []
    for done, future in enumerate(as_completed(futures), start=1):
        outcome = future.result()
        outcomes.append(outcome)
        what = (
            f"written in {outcome['seconds']:.1f}s, {outcome['n_tokens']} x {outcome['n_neurons']}, "
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
    method: str = "biclustering",
    row_ks: Sequence[int] = (6, 9, 12),
    col_ks: Sequence[int] = (6, 9, 12),
    n_permutations: int = 1000,
    statistic: str = "r2",
    selection: str = "z",
    seed: int = 0,
    drop_first: int = 0,
    null: str = "label_shuffle",
    n_refits: int = 10,
    overwrite: bool = False,
    dask_address: str | None = None,
    n_workers: int | None = None,
    serial: bool = False,
) -> list[dict[str, Any]]:
    """Bicluster every matching activations partition of the lake, in parallel.

    Parameters
    ----------
    lake : str
        Lake root.
    models, sites, layers : list, optional
        Which activations partitions (default: every one in the lake).
    method, row_ks, col_ks, n_permutations, statistic, selection, seed, drop_first, null, n_refits
        As in :class:`tnb.bicluster_stage.BiclusterParams`.
    overwrite : bool
        Redo partitions that are already complete.
    dask_address : str, optional
        Scheduler of an existing Dask cluster; default: a local cluster sized to the machine.
    n_workers : int, optional
        Workers of the local cluster (default: one per core, at most one per partition).
    serial : bool
        One partition at a time in this process, no Dask.

    Returns
    -------
    list of dict
        One :class:`tnb.bicluster_stage.PartitionOutcome` per partition, sorted.
    """
    params = BiclusterParams(
        method=method, row_ks=tuple(row_ks), col_ks=tuple(col_ks), n_permutations=n_permutations,
        statistic=statistic, selection=selection, seed=seed, drop_first=drop_first, null=null, n_refits=n_refits,
    )
    partitions, pending = list_partitions_task(lake, models, sites, layers, params.config())
    todo = partitions if overwrite else pending
    if not todo:
        print(f"all {len(partitions)} partitions already complete; nothing to bicluster")
        serial = True  # no cluster to start for tasks that only confirm the skip
    runner, blas_threads = make_task_runner(len(todo), dask_address, n_workers, serial)
    print(f"biclustering {len(todo)} of {len(partitions)} partitions on {_describe(runner, blas_threads)}")
    return _bicluster_partitions.with_options(task_runner=runner)(
        lake, [tuple(p) for p in partitions], params.config(), overwrite, blas_threads
    )


def _describe(runner: Any, blas_threads: int | None) -> str:
    if isinstance(runner, ThreadPoolTaskRunner):
        return "this process, one partition at a time, single-threaded"
    if getattr(runner, "address", None) is None:
        kwargs = runner.cluster_kwargs
        return f"a local Dask cluster of {kwargs['n_workers']} single-threaded workers"
    return f"the Dask cluster at {getattr(runner, 'address', '?')}"
