"""Benchmark: the whole pipeline, orchestrated, on a GPT-2-small-shaped model.

A GPT-2 with random weights (12 layers, 768 wide by default; the real GPT-2 tokenizer)
over 20,000 tokens of the bundled Wikipedia sample, the study's grid {6,9,12}^2 and
1,000 permutations, every residual layer (13 partitions). One run, side by side:

1. the pipeline, serial bicluster stage (``pipeline_flow(serial=True)``): wall time per
   stage, and the orchestration overhead = wall time / sum of the tasks' own run time
   (from the Prefect API: tokenize, extract, 13 bicluster tasks, report);
2. the bicluster stage again on a copy of the extracted inputs, on a local Dask cluster
   (one worker per core): the speed-up over the serial stage;
3. the study's approach for the same work, estimated: a scikit-learn fit per grid point
   plus the pure-Python R^2 loop and 10-shuffle Z, timed on one real layer by
   ``bench/bicluster.py``'s ``study_approach`` (one grid point x 9, the loop extrapolated
   from a subset), times the number of layers, plus the same extraction.

Run:  python bench/pipeline.py                   (the full benchmark, ~15-30 min on 2 cores)
      python bench/pipeline.py --tokens 2000 --n-layer 2 --permutations 100   (a quick look)
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import tempfile
import time
from pathlib import Path

import flows  # noqa: F401  (Prefect defaults before prefect is imported)

HERE = Path(__file__).resolve().parent


def _tiny_gpt2(directory: Path, n_layer: int, n_embd: int) -> Path:
    import torch
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    config = GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=max(1, n_embd // 64), vocab_size=50257)
    GPT2Model(config).save_pretrained(directory)
    return directory


def _task_seconds(since: float) -> dict[str, float]:
    """Sum of the task runs' own run time by task name, for task runs started after ``since``."""
    from datetime import datetime, timezone

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterStartTime

    after = datetime.fromtimestamp(since, tz=timezone.utc)
    totals: dict[str, float] = {}
    with get_client(sync_client=True) as client:
        offset = 0
        while True:
            runs = client.read_task_runs(
                task_run_filter=TaskRunFilter(start_time=TaskRunFilterStartTime(after_=after)), offset=offset, limit=200
            )
            for run in runs:
                if run.name.startswith("tnb-"):
                    continue  # a subflow's placeholder task run: its own tasks are counted
                # "bicluster model/site/layer=3" (named by partition) or "extract-3fa" (Prefect's suffix)
                name = run.name.split(" ")[0] if " " in run.name else run.name.rsplit("-", 1)[0]
                totals[name] = totals.get(name, 0.0) + run.total_run_time.total_seconds()
            if len(runs) < 200:
                break
            offset += 200
    return totals


def _study_estimate(lake_root: Path, model: str, n_layers: int, ks: tuple[int, ...], seed: int) -> tuple[float, str]:
    spec = importlib.util.spec_from_file_location("bench_bicluster", HERE / "bicluster.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from threadpoolctl import threadpool_limits

    from tnb.lake import Lake
    from tnb.prepare import prepare

    matrix = prepare(Lake(lake_root).read_layer(model, "resid", max(1, n_layers // 2))).matrix
    grid = [(row_k, col_k) for row_k in ks for col_k in ks]
    with threadpool_limits(limits=1, user_api="openmp"):
        study = module.study_approach(matrix, grid, seed, loop_budget=60.0, loop_subset_elements=1_000_000)
    return study["seconds"] * (n_layers + 1), study["note"]


def _load() -> str:
    return "load average {:.1f}".format(os.getloadavg()[0])


def _compare_runners(source: Path, work: Path, common: dict, workers: int | None) -> None:
    """The bicluster stage alone, serial then on a local Dask cluster, on copies of ``source``'s inputs."""
    from flows.bicluster import bicluster_flow
    from flows.cli import prefect_api

    walls = {}
    with prefect_api(quiet=True):
        for name, options in (("serial", {"serial": True}), ("dask", {"n_workers": workers})):
            lake = work / f"lake-{name}-only"
            shutil.rmtree(lake, ignore_errors=True)
            for table in ("tokens", "models", "activations"):
                shutil.copytree(source / table, lake / table)
            before = _load()
            start = time.perf_counter()
            bicluster_flow(lake=str(lake), **common, **options)
            walls[name] = time.perf_counter() - start
            print(f"bicluster stage, {name}: {walls[name]:.1f} s ({before} before, {_load()} after)")
    print(f"Dask speed-up: {walls['serial'] / walls['dask']:.2f}x")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=20_000)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--n-layer", type=int, default=12)
    parser.add_argument("--n-embd", type=int, default=768)
    parser.add_argument("--ks", default="6,9,12")
    parser.add_argument("--permutations", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=None, help="Dask workers (default: one per core)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None, help="keep the lakes here (default: a temporary directory)")
    parser.add_argument("--skip-study", action="store_true", help="do not estimate the study's approach")
    parser.add_argument("--dask-only-from", default=None, metavar="LAKE",
                        help="only compare the bicluster stage, serial vs Dask, on the inputs of this lake")
    args = parser.parse_args(argv)
    ks = tuple(int(k) for k in args.ks.split(","))

    from flows.bicluster import bicluster_flow
    from flows.cli import prefect_api
    from flows.pipeline import pipeline_flow

    common = {"row_ks": ks, "col_ks": ks, "n_permutations": args.permutations, "seed": args.seed}
    work = Path(args.workdir or tempfile.mkdtemp(prefix="tnb-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.dask_only_from:
        _compare_runners(Path(args.dask_only_from).absolute(), work, common, args.workers)
        return
    model_dir = _tiny_gpt2(work / "gpt2-small-random", args.n_layer, args.n_embd)
    serial_lake, dask_lake = work / "lake-serial", work / "lake-dask"
    for path in (serial_lake, dask_lake, work / "report"):
        shutil.rmtree(path, ignore_errors=True)
    print(f"cores: {os.cpu_count()}; model: GPT-2 shape {args.n_layer} layers x {args.n_embd}, random weights; "
          f"{args.tokens:,} tokens; grid {ks}^2; {args.permutations} permutations")

    with prefect_api(quiet=True):
        print(f"pipeline starts ({_load()})")
        started = time.time()
        wall_start = time.perf_counter()
        outcome = pipeline_flow(
            lake=str(serial_lake), models=[str(model_dir)], max_tokens=args.tokens, seq_len=args.seq_len,
            serial=True, report_dir=str(work / "report"), progress=False, **common,
        )
        pipeline_wall = time.perf_counter() - wall_start
        print(f"pipeline done ({_load()})")
        tasks = _task_seconds(started)
        model = outcome["extract"][0]["model"]

        for table in ("tokens", "models", "activations"):
            shutil.copytree(serial_lake / table, dask_lake / table)
        wall_start = time.perf_counter()
        dask_outcomes = bicluster_flow(lake=str(dask_lake), n_workers=args.workers, **common)
        dask_wall = time.perf_counter() - wall_start
        print(f"Dask bicluster done ({_load()})")
    assert all(o["status"] == "written" for o in dask_outcomes)

    import polars as pl

    from tnb.lake import Lake

    keys = ["layer", "row_k", "col_k"]
    serial_metrics = Lake(serial_lake).scan("metrics").drop("seconds").collect().sort(keys)
    dask_metrics = Lake(dask_lake).scan("metrics").drop("seconds").collect().sort(keys)
    identical = serial_metrics.equals(dask_metrics)

    print("task run time by task:", {name: round(seconds, 1) for name, seconds in sorted(tasks.items())})
    compute = sum(tasks.values())
    stage = outcome["seconds"]
    print("\n| stage | wall s (orchestrated) | tasks' own run time s |")
    print("|---|---:|---:|")
    print(f"| ingest + tokenize + extract | {stage['extract']:.1f} | {tasks.get('tokenize', 0) + tasks.get('extract', 0):.1f} |")
    print(f"| bicluster ({args.n_layer + 1} layers, serial) | {stage['bicluster']:.1f} | {tasks.get('bicluster', 0):.1f} |")
    print(f"| analyze (report) | {stage['analyze']:.1f} | {tasks.get('write-report', 0):.1f} |")
    print(f"| whole pipeline | {pipeline_wall:.1f} | {compute:.1f} |")
    print(f"\norchestration overhead (pipeline wall / sum of task run time): {pipeline_wall / compute:.2f}x")
    print(f"bicluster stage on a local Dask cluster: {dask_wall:.1f} s vs serial {stage['bicluster']:.1f} s "
          f"-> speed-up {stage['bicluster'] / dask_wall:.2f}x; metrics identical to serial: {identical}")
    if not identical:
        print(pl.concat([serial_metrics, dask_metrics]).unique(keep="none"))

    if not args.skip_study:
        study_bicluster, note = _study_estimate(serial_lake, model, args.n_layer, ks, args.seed)
        extract_seconds = tasks.get("tokenize", 0) + tasks.get("extract", 0)
        study_total = extract_seconds + study_bicluster
        ours = stage["extract"] + dask_wall + stage["analyze"]
        print(f"study's approach, estimated: {study_total / 3600:.2f} h = extraction {extract_seconds:.0f} s + "
              f"{args.n_layer + 1} layers x {study_bicluster / (args.n_layer + 1):.0f} s ({note})")
        print(f"tnb (extract + Dask bicluster + report): {ours:.0f} s -> {study_total / ours:.0f}x faster")


if __name__ == "__main__":
    main()
