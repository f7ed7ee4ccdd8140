"""GPU extraction benchmark: does writing keep up with a float16/bfloat16 forward pass?

On a CUDA machine, for a GPT-2-XL-shaped model (48 layers, 1,600 wide, random weights built
on the GPU from its config: nothing is downloaded) and each compute dtype, interleaved
round by round in fresh child processes:

- bare: the forward pass alone (batched as tnb batches, ``use_cache=False``, nothing kept);
- tnb: :func:`tnb.extract.extract_activations`, all 49 residual layers, tokens -> published
  float16 Parquet in a lake on local disk (``--lake-dir``), writer threads beside the GPU.

It prints tokens/s (min / median / max), the ratio of medians, tnb's time split, the
bytes written per second, and whether writing keeps up: the share of tnb's pass that the
forward loop spent waiting for the writers (when it is large, the limit is encoding and
disk, not the GPU).

    python bench/gpu_extract.py                  # CUDA: GPT-2-XL shape, float16 and bfloat16, 20,000 tokens
    python bench/gpu_extract.py --batch-size 64  # bigger batches
    python bench/gpu_extract.py --dry-run        # CPU, a tiny GPT-2 shape, 512 tokens, one round: checks the script

The model is built in the compute dtype by replacing :func:`tnb.extract.load_model` in the
child (tnb itself loads float32 weights); everything after the load is tnb's own code.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import extract as cpu_bench  # (bench/extract.py: token stream, memory, load average, min/median/max)

XL = {"n_layer": 48, "n_embd": 1600, "n_head": 25}
TINY = {"n_layer": 2, "n_embd": 64, "n_head": 2}


def write_config(directory: Path, shape: dict) -> Path:
    """A model directory holding only a GPT-2 config (the bundled GPT-2 tokenizer is used)."""
    from transformers import GPT2Config

    GPT2Config(**shape).save_pretrained(directory)
    return directory


def builder(dtype: str):
    """A stand-in for :func:`tnb.models.load_model`: random weights made on the device, in ``dtype``."""
    import torch
    from transformers import AutoModel

    from tnb.models import load_config

    def build(spec, device: str = "cpu"):
        torch.manual_seed(0)
        with torch.device(device):
            model = AutoModel.from_config(load_config(spec), dtype=getattr(torch, dtype))
        return model.eval()

    return build


def child(approach: str, model: str, lake: Path, args: argparse.Namespace) -> dict:
    import numpy as np
    import torch
    import tqdm.auto  # noqa: F401  (imported before the clock starts)

    import tnb.extract
    from tnb.lake import Lake
    from tnb.models import load_tokenizer

    spec, stream, token_ids, seq_ids, tokenize_s = cpu_bench._token_stream(model, lake, args.max_tokens, args.seq_len)
    build = builder(args.dtype)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    row: dict = {"tokens": len(token_ids), "tokenize_s": tokenize_s}
    if approach == "bare":
        wrapping, _, _ = tnb.extract._wrapped_identity(spec, stream, load_tokenizer(spec)[1], False)
        begin = time.perf_counter()
        base = build(spec, args.device)
        sync()
        row["load_s"] = time.perf_counter() - begin
        start = time.perf_counter()
        with torch.inference_mode():
            for _, ids in tnb.extract._batches(token_ids, seq_ids, args.batch_size):
                input_ids = torch.from_numpy(wrapping.apply(ids.astype(np.int64))).to(args.device)
                base(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), use_cache=False)
        sync()
        row["seconds"] = time.perf_counter() - start
    else:
        tnb.extract.load_model = build
        start = time.perf_counter()
        result = tnb.extract.extract_activations(
            Lake(lake), spec, stream, ("resid",), None, batch_size=args.batch_size, device=args.device, progress=False
        )
        row["seconds"] = time.perf_counter() - start - result.seconds["load"]
        row["load_s"], row["split"] = result.seconds["load"], dict(result.seconds)
        row["bytes"] = sum(f.stat().st_size for f in (lake / "activations").rglob("*.parquet"))
        row["writer_threads"] = tnb.extract.writer_threads(args.device, result.n_layers + 1)
    if args.device == "cuda":
        row["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    row["peak_rss_mb"] = cpu_bench.memory_mb()[1]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", nargs="+", default=["float16", "bfloat16"], choices=("float16", "bfloat16", "float32"))
    parser.add_argument("--max-tokens", type=int, default=20_000)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lake-dir", type=Path, default=None, help="where the lakes go (local disk; default: the temp dir)")
    parser.add_argument("--dry-run", action="store_true", help="CPU, a tiny GPT-2 shape, 512 tokens, one round")
    parser.add_argument("--child", choices=("bare", "tnb"), help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--lake", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--dtype", help=argparse.SUPPRESS)
    parser.add_argument("--device", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.model, args.lake, args)))
        return

    import torch

    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device here: run with --dry-run to check the script on the CPU")
    if args.dry_run:
        args.max_tokens, args.repeats = min(args.max_tokens, 512), 1
    shape = TINY if args.dry_run else XL
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "none (dry run on the CPU)"
    before, _ = cpu_bench.load_line("before")
    print(f"{before}; {os.cpu_count()} cores; GPU: {gpu}", flush=True)
    with tempfile.TemporaryDirectory(dir=args.lake_dir) as tmp:
        model = str(write_config(Path(tmp) / ("gpt2-xl-shape" if not args.dry_run else "gpt2-tiny-shape"), shape))
        rows: dict[tuple[str, str], list[dict]] = {}
        for repeat in range(args.repeats):
            for dtype in args.dtypes:
                for approach in ("bare", "tnb"):
                    lake = Path(tempfile.mkdtemp(dir=tmp))
                    argv = ["--child", approach, "--model", model, "--lake", str(lake), "--dtype", dtype,
                            "--device", device, "--max-tokens", str(args.max_tokens), "--seq-len", str(args.seq_len),
                            "--batch-size", str(args.batch_size)]
                    row = cpu_bench.run_child_of(__file__, argv)
                    shutil.rmtree(lake, ignore_errors=True)
                    rows.setdefault((dtype, approach), []).append(row)
                    print(f"  round {repeat + 1} {dtype:8s} {approach:4s}: {row['tokens'] / row['seconds']:8.0f} tok/s",
                          file=sys.stderr, flush=True)
    after, _ = cpu_bench.load_line("after")
    report(args, shape, rows, before, after)


def report(args: argparse.Namespace, shape: dict, rows: dict, before: str, after: str) -> None:
    spread = cpu_bench.spread
    print(f"\nGPT-2 shape {shape}, random weights; {args.max_tokens:,} tokens, sequences of {args.seq_len}, "
          f"batches of {args.batch_size}; {args.repeats} interleaved rounds; {before}; {after}")
    print("\n| compute dtype | bare tokens/s | tnb tokens/s | tnb / bare (medians) | tnb's forward / convert+copy / "
          "write (threads) / wait / publish s | written MB/s | forward loop waiting on writers | peak GPU MB | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for dtype in args.dtypes:
        bare, ours = rows[(dtype, "bare")], rows[(dtype, "tnb")]

        def rates(runs: list[dict]) -> list[float]:
            return [r["tokens"] / r["seconds"] for r in runs]

        ratio = statistics.median(rates(ours)) / statistics.median(rates(bare))
        split = {stage: statistics.median(r["split"][stage] for r in ours) for stage in cpu_bench.STAGES}
        waiting = statistics.median(r["split"]["wait"] / r["seconds"] for r in ours)
        mb_s = statistics.median(r["bytes"] / 2**20 / r["seconds"] for r in ours)
        gpu = spread([r.get("gpu_peak_mb", 0.0) for r in ours])
        print(f"| {dtype} | {spread(rates(bare))} | {spread(rates(ours))} | {ratio:.2f}x | "
              f"{split['forward']:.2f} / {split['convert']:.2f} / {split['write']:.2f} ({ours[0]['writer_threads']}) / "
              f"{split['wait']:.2f} / {split['publish']:.2f} | {mb_s:,.1f} | {waiting:.0%} | {gpu} | "
              f"{spread([r['peak_rss_mb'] for r in ours])} |")
    print("\nWriting keeps up when the forward loop seldom waits on the writers (tnb / bare near 1); when it "
          "waits most of the time, encoding and disk are the limit, not the GPU.")


if __name__ == "__main__":
    main()
