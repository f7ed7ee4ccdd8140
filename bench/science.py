"""Calibration of tnb's test of token x neuron structure: does it find structure only where there is some?

Part 1 (always): one table, each cell over ``--seeds`` matrices (default 20) of ``--tokens`` x
``--neurons`` (default 1,500 x 384: the width of all-MiniLM-L6-v2), each biclustered over the
study's grid {6, 9, 12}^2 with tnb's defaults (interaction refit null, ``--n-null`` draws,
5 seeds for stability, selection by excess over the null):

- ``noise``: i.i.d. Gaussian;
- ``loudness``: Gaussian noise times arbitrary per-token and per-neuron magnitudes (log-normal
  and uniform): every token and neuron has its own scale, nothing else;
- ``minilm-shuffled``: real all-MiniLM-L6-v2 last-layer activations on the bundled Wikipedia
  sample, every neuron's column shuffled across tokens (a different shuffle per seed);
- ``planted s``: a 6 x 6 checkerboard, block effects N(0, s^2) added to unit Gaussian noise,
  for s in 0.3, 0.5, 0.7, 1.0, prepared as |z| (the study's ``abs``) and as ``signed`` z.

Columns: the share of matrices with a significant layer (``p_layer <= 0.05``; the goal where
nothing is planted is ~5%), the share with a *finding* (selected point significant and stable),
the most often selected grid point, the mean ARI of the selected token labels with the planted
rows (planted rows only), the mean stability of the selected point, and the mean Z.

Part 2 (``--lake L``): per layer of every model in a lake (e.g. after ``tnb run``, which adds
each model's untrained twin): the selected point's R^2 parts, p_layer, stability, finding and
the topicality (AMI of token clusters with the document and with the token id).

    python bench/science.py                     # part 1, ~10-20 min on 2 cores
    python bench/science.py --seeds 5 --n-null 19   # a quick look
    python bench/science.py --skip-calibration --lake lake
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor

import numpy as np

SIGNALS = (0.3, 0.5, 0.7, 1.0)


def _loadavg() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def minilm_last_layer(n_tokens: int) -> np.ndarray:
    """Last-layer activations of all-MiniLM-L6-v2 on the start of the bundled Wikipedia sample."""
    import pyarrow.parquet as pq
    import torch
    from transformers import AutoModel, AutoTokenizer

    from tnb.corpus import bundled_corpus_path
    from tnb.models import minilm_dir

    texts = pq.read_table(bundled_corpus_path()).column("text").to_pylist()
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    model = AutoModel.from_pretrained(minilm_dir()).eval()
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if len(ids) >= n_tokens:
            break
    seq_len = 126  # + [CLS] and [SEP], as the model was trained
    rows = []
    with torch.no_grad():
        for start in range(0, n_tokens, seq_len):
            chunk = ids[start : min(start + seq_len, n_tokens)]
            batch = torch.tensor([[tokenizer.cls_token_id, *chunk, tokenizer.sep_token_id]])
            hidden = model(input_ids=batch).last_hidden_state[0, 1:-1]
            rows.append(hidden.numpy())
    return np.concatenate(rows)[:n_tokens].astype(np.float32)


def make_matrix(kind: str, seed: int, shape: tuple[int, int], real: np.ndarray | None):
    """(raw matrix, planted token labels or None, input)."""
    rng = np.random.default_rng(seed)
    n_tokens, n_neurons = shape
    if kind in ("noise", "noise-signed"):
        return rng.standard_normal(shape), None, "signed" if kind.endswith("signed") else "abs"
    if kind in ("loudness", "loudness-signed"):
        token_scale = np.exp(rng.standard_normal(n_tokens))[:, None]
        neuron_scale = rng.uniform(0.1, 5.0, n_neurons)[None, :]
        matrix = rng.standard_normal(shape) * token_scale * neuron_scale
        return matrix, None, "signed" if kind.endswith("signed") else "abs"
    if kind == "minilm-shuffled":
        return rng.permuted(real, axis=0), None, "abs"
    name, signal, prepared = kind.split()
    rows, cols = rng.integers(0, 6, n_tokens), rng.integers(0, 6, n_neurons)
    effect = rng.standard_normal((6, 6)) * float(signal)
    return rng.standard_normal(shape) + effect[rows][:, cols], rows, prepared


def one_cell(task: tuple) -> dict:
    """One matrix biclustered with tnb's defaults; what the table needs."""
    from sklearn.metrics import adjusted_rand_score
    from threadpoolctl import threadpool_limits

    from tnb.bicluster import grid_search
    from tnb.prepare import prepare

    kind, seed, shape, real, n_null = task
    raw, truth, input_kind = make_matrix(kind, seed, shape, real)
    start = time.perf_counter()
    with threadpool_limits(limits=1):
        results = grid_search(prepare(raw, input_kind), n_null=n_null, random_state=seed, input=input_kind)
    chosen = next(r for r in results if r.selected)
    return {
        "kind": kind,
        "significant": any(r.significant for r in results),
        "finding": chosen.finding,
        "selected": f"{chosen.row_k}x{chosen.col_k}",
        "ari": float(adjusted_rand_score(truth, chosen.row_labels)) if truth is not None else float("nan"),
        "stability": chosen.stability,
        "z": chosen.z,
        "seconds": time.perf_counter() - start,
    }


def calibration(args: argparse.Namespace) -> None:
    shape = (args.tokens, args.neurons)
    kinds = ["noise", "loudness", "minilm-shuffled", "noise-signed", "loudness-signed"]
    kinds += [f"planted {s} {prepared}" for prepared in ("abs", "signed") for s in SIGNALS]
    if args.only:
        kinds = [kind for kind in kinds if kind.split()[0] in args.only]
    real = minilm_last_layer(args.tokens)[:, : args.neurons] if "minilm-shuffled" in kinds else None
    # interleaved: seed-major, so a change of load spreads over every row alike
    tasks = [(kind, seed, shape, real if kind == "minilm-shuffled" else None, args.n_null)
             for seed in range(args.seeds) for kind in kinds]
    print(f"load average before: {_loadavg()}; {len(tasks)} matrices of {shape[0]} x {shape[1]}, "
          f"grid {{6,9,12}}^2, n_null={args.n_null}, 5 seeds for stability, {args.workers} processes")
    start = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        rows = list(pool.map(one_cell, tasks))
    print(f"load average after: {_loadavg()}; {time.perf_counter() - start:.0f} s wall, "
          f"{np.median([r['seconds'] for r in rows]):.1f} s per matrix (median)")
    print()
    print("| matrix | input | n | significant (p_layer <= .05) | finding | selected (mode) | ARI with truth | stability | Z |")
    print("|---|---|---|---|---|---|---|---|---|")
    for kind in kinds:
        cell = [r for r in rows if r["kind"] == kind]
        if kind.startswith("planted"):
            name, prepared = kind.rsplit(" ", 1)
        else:
            name, prepared = kind.removesuffix("-signed"), "signed" if kind.endswith("-signed") else "abs"
        mode, count = Counter(r["selected"] for r in cell).most_common(1)[0]
        ari = np.nanmean([r["ari"] for r in cell]) if name.startswith("planted") else float("nan")
        print(
            f"| {name} | {prepared} | {len(cell)} | {np.mean([r['significant'] for r in cell]):.0%} "
            f"| {np.mean([r['finding'] for r in cell]):.0%} | {mode} ({count}/{len(cell)}) "
            f"| {'' if np.isnan(ari) else f'{ari:.2f}'} | {np.mean([r['stability'] for r in cell]):.2f} "
            f"| {np.nanmean([r['z'] for r in cell]):.1f} |"
        )


def lake_table(lake_path: str) -> None:
    import polars as pl

    from tnb.lake import Lake

    lake = Lake(lake_path)
    metrics = lake.scan("metrics").filter(pl.col("selected")).collect()
    columns = ["model", "site", "layer", "row_k", "col_k", "r2", "r2_rows", "r2_cols", "r2_interaction",
               "null_mean", "p_layer", "stability", "finding", "spec_mean", "spec_mean_noise", "spec_mi"]
    table = metrics.select([c for c in columns if c in metrics.columns]).sort(["model", "site", "layer"])
    try:
        from tnb.query import run_query

        topicality = run_query(lake, "topicality")
        keys = [k for k in ("model", "site", "layer") if k in topicality.columns]
        keep = keys + [c for c in topicality.columns if c.startswith("ami") or "beyond" in c]
        table = table.join(topicality.select(keep), on=keys, how="left")
    except Exception as error:  # noqa: BLE001 -- the table is still worth printing without it
        print(f"(no topicality: {error})", file=sys.stderr)
    with pl.Config(tbl_rows=200, tbl_cols=40, float_precision=4, tbl_formatting="MARKDOWN", tbl_hide_dataframe_shape=True,
                   tbl_hide_column_data_types=True, fmt_str_lengths=40, tbl_width_chars=400):
        print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20, help="matrices per cell (default: %(default)s)")
    parser.add_argument("--tokens", type=int, default=1500)
    parser.add_argument("--neurons", type=int, default=384)
    parser.add_argument("--n-null", type=int, default=39,
                        help="null draws per matrix (default: %(default)s; the pipeline's default is 99)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--lake", default=None, help="also print the per-layer table of this lake")
    parser.add_argument("--skip-calibration", action="store_true")
    parser.add_argument("--only", nargs="+", choices=["noise", "loudness", "minilm-shuffled", "noise-signed", "loudness-signed", "planted"],
                        help="only these rows of the calibration table")
    args = parser.parse_args()
    if not args.skip_calibration:
        calibration(args)
    if args.lake:
        print()
        lake_table(args.lake)


if __name__ == "__main__":
    main()
