"""Benchmark: the whole pipeline, orchestrated, on a GPT-2-small-shaped model.

A GPT-2 with random weights (12 layers, 768 wide by default; the real GPT-2 tokenizer)
over 20,000 tokens of the bundled Wikipedia sample, the study's grid {6,9,12}^2, tnb's
default calibrated null (99 whole-grid refits per layer, run as Dask tasks of 25 draws)
and 5 seeds for stability, every residual layer (13 partitions):

1. the pipeline on a local Dask cluster (one worker per core): wall time per stage, the
   tasks' own run time (Prefect API), every null task's and final task's time, and the
   projected wall time of the bicluster stage on 8, 32 and 128 workers from them;
2. a check that a serial run and a Dask run give identical metrics (a few layers, small null);
3. the study's approach for one fit per grid point (no null, no stability), estimated
   from ``bench/bicluster.py``'s ``study_approach`` on one layer.

Run:  python bench/pipeline.py                   (the full benchmark, ~15-20 min on 2 cores)
      python bench/pipeline.py --tokens 2000 --n-layer 2 --n-null 9   (a quick look)
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the checkout's flows/ (an install has it only as tnb.flows)

import flows  # noqa: E402, F401  (Prefect defaults before prefect is imported)


def _tiny_gpt2(directory: Path, n_layer: int, n_embd: int) -> Path:
    import torch
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    config = GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=max(1, n_embd // 64), vocab_size=50257)
    GPT2Model(config).save_pretrained(directory)
    return directory


def _task_seconds(since: float) -> dict[str, float]:
    """Sum of the task runs' own run time by task name, for task runs started after ``since``."""
    from datetime import UTC, datetime

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterStartTime

    after = datetime.fromtimestamp(since, tz=UTC)
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
    return f"load average {os.getloadavg()[0]:.1f}"


def project_wall(null_seconds: list[list[float]], final_seconds: list[float], workers: int) -> float:
    """Projected wall time of the bicluster stage on ``workers`` workers from measured task times.

    Greedy list scheduling in submission order (as Dask does for ready tasks): every null
    chunk first, then each layer's final task once its own chunks are done.
    """
    import heapq

    free = [0.0] * workers
    heapq.heapify(free)
    done_at = []
    for chunks in null_seconds:
        layer_done = 0.0
        for seconds in chunks:
            start = heapq.heappop(free)
            heapq.heappush(free, start + seconds)
            layer_done = max(layer_done, start + seconds)
        done_at.append(layer_done)
    end = 0.0
    for ready, seconds in sorted(zip(done_at, final_seconds)):
        start = max(heapq.heappop(free), ready)
        heapq.heappush(free, start + seconds)
        end = max(end, start + seconds)
    return max(end, max(free))


def _compare_runners(source: Path, work: Path, common: dict, workers: int | None, layers: list[int]) -> bool:
    """The bicluster stage on a few layers, serial and on a local Dask cluster: are the metrics identical?"""
    import polars as pl

    from flows.bicluster import bicluster_flow
    from tnb.lake import Lake

    frames = []
    for name, options in (("serial", {"serial": True}), ("dask", {"n_workers": workers})):
        lake = work / f"lake-{name}-check"
        shutil.rmtree(lake, ignore_errors=True)
        for table in ("tokens", "models", "activations"):
            shutil.copytree(source / table, lake / table)
        bicluster_flow(lake=str(lake), layers=layers, **common, **options)
        frames.append(Lake(lake).scan("metrics").drop("seconds").collect().sort(["layer", "row_k", "col_k"]))
    identical = frames[0].equals(frames[1])
    if not identical:
        print(pl.concat(frames).unique(keep="none"))
    return identical


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=20_000)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--n-layer", type=int, default=12)
    parser.add_argument("--n-embd", type=int, default=768)
    parser.add_argument("--ks", default="6,9,12")
    parser.add_argument("--n-null", type=int, default=99)
    parser.add_argument("--n-seeds", type=int, default=5)
    parser.add_argument("--null-chunk", type=int, default=25)
    parser.add_argument("--workers", type=int, default=None, help="Dask workers (default: one per core)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None, help="keep the lakes here (default: a temporary directory)")
    parser.add_argument("--control", action="store_true",
                        help="also run the untrained twin (doubles every stage; the goal counts the model's 13 layers)")
    parser.add_argument("--skip-study", action="store_true", help="do not estimate the study's approach")
    parser.add_argument("--check-layers", type=int, default=2,
                        help="layers biclustered serial and on Dask with a small null, to check identical metrics")
    args = parser.parse_args(argv)
    ks = tuple(int(k) for k in args.ks.split(","))

    from flows.cli import prefect_api
    from flows.pipeline import pipeline_flow
    from tnb.params import BiclusterParams, ComputeParams, CorpusParams, ExtractParams, Study

    bicluster = {"row_ks": ks, "col_ks": ks, "n_null": args.n_null, "n_seeds": args.n_seeds, "seed": args.seed}
    work = Path(args.workdir or tempfile.mkdtemp(prefix="tnb-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    model_dir = _tiny_gpt2(work / "gpt2-small-random", args.n_layer, args.n_embd)
    lake = work / "lake"
    for path in (lake, work / "report"):
        shutil.rmtree(path, ignore_errors=True)
    print(f"cores: {os.cpu_count()}; model: GPT-2 shape {args.n_layer} layers x {args.n_embd}, random weights; "
          f"{args.tokens:,} tokens; grid {ks}^2; null {args.n_null} refits in chunks of {args.null_chunk}; "
          f"{args.n_seeds} seeds")

    with prefect_api(quiet=True):
        print(f"pipeline starts ({_load()})")
        started = time.time()
        wall_start = time.perf_counter()
        outcome = pipeline_flow(study=Study(
            lake=str(lake), corpus=CorpusParams(max_tokens=args.tokens, seq_len=args.seq_len),
            extract=ExtractParams(models=(str(model_dir),), control=args.control), bicluster=BiclusterParams(**bicluster),
            compute=ComputeParams(n_workers=args.workers, null_chunk_size=args.null_chunk),
            report_dir=str(work / "report"), progress=False,
        ))
        pipeline_wall = time.perf_counter() - wall_start
        print(f"pipeline done ({_load()})")
        tasks = _task_seconds(started)
        model = outcome["extract"][0]["model"]
        identical = None
        if args.check_layers:
            small = {"bicluster": {**bicluster, "n_null": 4, "n_seeds": 2}, "null_chunk_size": 2}
            identical = _compare_runners(lake, work, small, args.workers, list(range(args.check_layers)))

    stage = outcome["seconds"]
    outcomes = [o for o in outcome["bicluster"] if o["status"] == "written"]
    null_seconds = [o["null_task_seconds"] for o in outcomes]
    final_seconds = [o["seconds"] for o in outcomes]
    flat = sorted(s for chunk in null_seconds for s in chunk)
    print("task run time by task:", {name: round(seconds, 1) for name, seconds in sorted(tasks.items())})
    print(f"null tasks ({len(flat)}): median {flat[len(flat) // 2]:.1f} s, min {flat[0]:.1f} s, max {flat[-1]:.1f} s "
          f"({flat[len(flat) // 2] / args.null_chunk:.2f} s per grid refit)")
    print(f"final tasks ({len(final_seconds)}: fit + {args.n_seeds - 1} seeds + scores + publish): "
          f"median {sorted(final_seconds)[len(final_seconds) // 2]:.1f} s")
    compute = sum(tasks.values())
    print("\n| stage | wall s (orchestrated) | tasks' own run time s |")
    print("|---|---:|---:|")
    print(f"| ingest + tokenize + extract | {stage['extract']:.1f} | {tasks.get('tokenize', 0) + tasks.get('extract', 0):.1f} |")
    print(f"| bicluster ({args.n_layer + 1} layers, Dask) | {stage['bicluster']:.1f} | "
          f"{tasks.get('bicluster', 0) + tasks.get('null', 0):.1f} |")
    print(f"| analyze (report) | {stage['analyze']:.1f} | {tasks.get('write-report', 0):.1f} |")
    print(f"| whole pipeline | {pipeline_wall:.1f} | {compute:.1f} |")
    print(f"\nbicluster stage on {os.cpu_count()} cores: {stage['bicluster'] / 60:.1f} min (goal: <= 15 min)")
    print("projected bicluster stage from these task times (greedy scheduling, same chunks):")
    for workers in (2, 8, 32, 128):
        print(f"  {workers:>4} workers: {project_wall(null_seconds, final_seconds, workers) / 60:.1f} min")
    if identical is not None:
        print(f"serial vs Dask on {args.check_layers} layers (small null): metrics identical: {identical}")

    if not args.skip_study:
        study_bicluster, note = _study_estimate(lake, model, args.n_layer, ks, args.seed)
        extract_seconds = tasks.get("tokenize", 0) + tasks.get("extract", 0)
        study_total = extract_seconds + study_bicluster
        print(f"study's approach (one fit per point, no null, no stability), estimated: {study_total / 3600:.2f} h = "
              f"extraction {extract_seconds:.0f} s + {args.n_layer + 1} layers x "
              f"{study_bicluster / (args.n_layer + 1):.0f} s ({note})")


if __name__ == "__main__":
    main()
