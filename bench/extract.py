"""Extraction benchmark: tnb's extractor against a bare forward pass and the study's approach.

Four approaches (and a fifth on request) over the same model and the same token stream, each
run in a fresh child process (so peak RSS is its own), interleaved round by round (bare
bare-heap tnb study, bare bare-heap tnb study, ...), ``--repeats`` rounds:

- bare: the base model (loaded as tnb loads it), batched as tnb batches, ``use_cache=False``,
  no hidden states, nothing kept or written: the limit for tnb's speed;
- bare-heap: the same bare pass under tnb's policy for glibc's heap
  (:class:`tnb.extract._Heap`), so what the forward pass itself holds under it is measured,
  apart from what tnb adds;
- tnb: :func:`tnb.extract.extract_activations`, every residual layer, tokens -> published
  float16 Parquet in the lake;
- study: the plain HF model *with* its LM head, batch size 1, ``output_hidden_states``,
  every layer kept in RAM as float32, saved with ``np.savez_compressed``;
- tnb-mmap4 (only when named in ``--approaches``): tnb with glibc's mmap threshold at 4 MiB
  instead of tnb's 32 MiB, so the forward pass's large transients are mapped afresh and
  unmapped when freed instead of reusing heap pages: what holding them in the heap costs in
  memory, and saves in time;
- tnb-jemalloc (only when named): tnb in a process started under jemalloc (Debian:
  ``apt-get install libjemalloc2``) with :data:`tnb.allocator.JEMALLOC_CONF`, the environment
  :func:`tnb.allocator.preload_environ` makes: what ``tnb run`` and ``tnb extract`` start
  over on where jemalloc is installed (``--allocator auto``); tnb's glibc heap policy then
  stands aside.

Tokens/s is the pass alone (every approach: model load, tokenization and a one-token
warm-up forward pass are timed apart). It prints min / median / max of each figure, the
ratio of medians, where tnb's time goes, and the load average before and after (flagged
when the machine was busy). Memory: peak RSS (each child's VmHWM) and peak RSS above the
loaded model (VmRSS after load + warm-up: weights, libraries, thread pools), measured for
tnb and both bare passes at each of ``--memory-tokens``, ``--memory-repeats`` interleaved runs
each, against one batch of every layer in float32; and every batch's own peak (VmHWM reset
after each batch), whose spread and drift over a run tell a trend with tokens from chance.

    python bench/extract.py                               # GPT-2-small shape (12 x 768), random weights
    python bench/extract.py --model minilm                # the offline pretrained model
    python bench/extract.py --max-tokens 4096 --repeats 3 --memory-tokens 5000 20000 80000
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tnb.allocator import find_jemalloc, preload_environ, process_allocator

APPROACHES = ("bare", "bare-heap", "tnb", "study", "tnb-mmap4", "tnb-jemalloc")
#: run unless ``--approaches`` says otherwise (the other two are side experiments)
DEFAULT_APPROACHES = ("bare", "bare-heap", "tnb", "study")
#: glibc's mmap threshold of the tnb-mmap4 approach
SMALL_MMAP_THRESHOLD = 4 * 2**20
STAGES = ("forward", "convert", "write", "wait", "publish")


def make_gpt2_small(directory: Path) -> Path:
    """A GPT-2-small-shaped model (12 layers, 768 wide) with random weights, saved to disk."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config()).save_pretrained(directory)
    return directory


def memory_mb() -> tuple[float, float]:
    """This process's (current, peak) resident memory: VmRSS and VmHWM (ru_maxrss would include the parent's at fork)."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


class BatchPeaks:
    """Peak RSS of every batch: VmHWM read after the batch, then reset to the current RSS
    (``/proc/self/clear_refs``), so the run's peaks can be told apart from a trend with tokens.

    :meth:`start` (after the model's load) keeps the load's peak, so :attr:`overall` is still
    the whole run's peak. Where the reset is refused, :attr:`batches` stays empty.
    """

    def __init__(self) -> None:
        self.batches: list[float] = []
        self.overall = 0.0
        self._reset = Path("/proc/self/clear_refs")

    def _read_and_reset(self) -> float | None:
        peak = memory_mb()[1]
        self.overall = max(self.overall, peak)
        try:
            self._reset.write_text("5")
        except OSError:
            return None
        return peak

    def start(self) -> None:
        self._read_and_reset()

    def record(self) -> None:
        peak = self._read_and_reset()
        if peak is not None:
            self.batches.append(peak)

    def finish(self) -> float:
        """The whole run's peak RSS."""
        self.overall = max(self.overall, memory_mb()[1])
        return self.overall


def _token_stream(model: str, lake: Path, max_tokens: int, seq_len: int):
    """Tokenize into a fresh lake (timed); returns (spec, stream, token_ids, seq_ids, tokenize seconds)."""
    from tnb.extract import ensure_token_stream
    from tnb.lake import Lake, partition_key
    from tnb.models import load_tokenizer, resolve_model

    spec = resolve_model(model)
    begin = time.perf_counter()
    name, tokenizer = load_tokenizer(spec)
    stream = ensure_token_stream(Lake(lake), None, name, tokenizer, max_tokens, seq_len)
    seconds = time.perf_counter() - begin
    tokens = Lake(lake).read(partition_key("tokens", stream=stream))
    return spec, stream, tokens["token_id"].to_numpy(), tokens["seq_id"].to_numpy(), seconds


def _warm_up(model) -> None:
    """One forward pass over one token (starts the thread pools), then every weight read once.

    Weights are memory-mapped from safetensors: a forward pass pages in only the embedding
    rows of the tokens it sees (GPT-2's 154 MB embedding would otherwise be paged in as the
    run goes, and read as growth with tokens).
    """
    import torch

    with torch.inference_mode():
        model(input_ids=torch.zeros((1, 1), dtype=torch.int64))
        for parameter in model.parameters():
            parameter.sum()


class _NoHeap:
    """glibc's heap left as it is (the plain bare pass)."""

    def after_load(self) -> None: ...

    def between_batches(self) -> None: ...

    def close(self) -> None: ...


def child_bare(model: str, lake: Path, max_tokens: int, seq_len: int, batch_size: int, heap: bool = False) -> dict:
    """A bare forward pass that keeps nothing; ``heap``: under tnb's heap policy (``tnb.extract._Heap``)."""
    import numpy as np
    import torch

    from tnb.extract import _batches, _Heap, _wrapped_identity
    from tnb.models import load_model

    spec, stream, token_ids, seq_ids, tokenize_s = _token_stream(model, lake, max_tokens, seq_len)
    from tnb.models import load_tokenizer

    wrapping, _, _ = _wrapped_identity(spec, stream, load_tokenizer(spec)[1], False)
    held = _Heap() if heap else _NoHeap()
    begin = time.perf_counter()
    base = load_model(spec, "cpu")
    _warm_up(base)
    load_s, model_rss = time.perf_counter() - begin, memory_mb()[0]
    held.after_load()
    peaks = BatchPeaks()
    peaks.start()
    start, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        for _, ids in _batches(token_ids, seq_ids, batch_size):
            input_ids = torch.from_numpy(wrapping.apply(ids.astype(np.int64)))
            base(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), use_cache=False)
            held.between_batches()
            peaks.record()
    held.close()
    seconds, cpu_s = time.perf_counter() - start, time.process_time() - cpu
    return {"seconds": seconds, "cpu_s": cpu_s, "load_s": load_s, "tokenize_s": tokenize_s,
            "model_rss_mb": model_rss, "peak_rss_mb": peaks.finish(), "batch_peaks_mb": peaks.batches,
            "tokens": len(token_ids)}


def child_tnb(model: str, lake: Path, max_tokens: int, seq_len: int, batch_size: int,
              mmap_threshold: int | None = None) -> dict:
    """tnb's extraction; ``mmap_threshold``: glibc's, in place of tnb's (:data:`tnb.extract.MMAP_THRESHOLD`)."""
    import pyarrow.parquet as pq
    import torch  # noqa: F401  (imported before the clock starts, as in the other approaches)
    import tqdm.auto  # noqa: F401
    from transformers import AutoModel  # noqa: F401

    import tnb.extract
    from tnb.extract import extract_activations
    from tnb.lake import Lake
    from tnb.schemas import act_layout

    spec, stream, token_ids, _, tokenize_s = _token_stream(model, lake, max_tokens, seq_len)
    load_model, model_rss, load_cpu = tnb.extract.load_model, [], []
    peaks = BatchPeaks()

    def load_and_warm_up(*args, **kwargs):  # the same warm-up as the others, inside the load's time
        cpu = time.process_time()
        loaded = load_model(*args, **kwargs)
        _warm_up(loaded)
        model_rss.append(memory_mb()[0])
        load_cpu.append(time.process_time() - cpu)
        peaks.start()
        return loaded

    tnb.extract.load_model = load_and_warm_up
    if mmap_threshold is not None:
        tnb.extract.MMAP_THRESHOLD = mmap_threshold
    target = Lake(lake)
    start, cpu = time.perf_counter(), time.process_time()
    result = extract_activations(target, spec, stream, ("resid",), None, batch_size=batch_size, progress=False,
                                 on_progress=lambda done, total: peaks.record())
    seconds = time.perf_counter() - start - result.seconds["load"]
    cpu_s = time.process_time() - cpu - load_cpu[0]
    peak_rss = peaks.finish()  # before anything is read back
    files = list((Path(lake) / "activations").rglob("*.parquet"))
    layout = act_layout(pq.read_schema(files[0]).field("act"))
    assert layout is not None, f"no activations column in {files[0]}"
    width = layout[0]
    return {"seconds": seconds, "cpu_s": cpu_s, "load_s": result.seconds["load"], "tokenize_s": tokenize_s,
            "model_rss_mb": model_rss[0], "peak_rss_mb": peak_rss, "batch_peaks_mb": peaks.batches,
            "tokens": len(token_ids),
            "split": dict(result.seconds), "bytes": sum(f.stat().st_size for f in files),
            "values": sum(pq.read_metadata(f).num_rows for f in files) * width,
            "batch_mb": batch_size * seq_len * (result.n_layers + 1) * width * 4 / 2**20}


def child_study(model: str, lake: Path, max_tokens: int, seq_len: int, out: Path) -> dict:
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    from tnb.models import load_config

    spec, _, token_ids, seq_ids, tokenize_s = _token_stream(model, lake, max_tokens, seq_len)
    head_class = AutoModelForMaskedLM if load_config(spec).model_type == "bert" else AutoModelForCausalLM
    begin = time.perf_counter()
    lm = head_class.from_pretrained(spec.source, **spec.load_kwargs()).eval()
    _warm_up(lm)
    load_s, model_rss = time.perf_counter() - begin, memory_mb()[0]
    start, cpu = time.perf_counter(), time.process_time()
    layers: dict[int, list] = {}
    with torch.no_grad():
        for seq in np.unique(seq_ids):
            ids = torch.tensor(token_ids[seq_ids == seq][None].astype(np.int64))
            for layer, state in enumerate(lm(ids, output_hidden_states=True).hidden_states):
                layers.setdefault(layer, []).append(state[0].numpy().astype(np.float32))
    arrays = {f"layer_{layer}": np.concatenate(chunks) for layer, chunks in layers.items()}
    np.savez_compressed(out, **arrays)
    return {"seconds": time.perf_counter() - start, "cpu_s": time.process_time() - cpu, "load_s": load_s,
            "tokenize_s": tokenize_s, "model_rss_mb": model_rss, "tokens": len(token_ids), "bytes": out.stat().st_size,
            "values": sum(a.size for a in arrays.values())}


def run_child(argv: list[str], env: dict[str, str] | None = None) -> dict:
    return run_child_of(__file__, argv, env)


def jemalloc() -> str:
    """jemalloc's shared library, for ``LD_PRELOAD`` (exits with a one-line reason where there is none)."""
    found = find_jemalloc()
    if found is None:
        sys.exit("tnb-jemalloc: no jemalloc on this machine (Debian/Ubuntu: apt-get install libjemalloc2)")
    return found


def run_child_of(script: str, argv: list[str], env: dict[str, str] | None = None) -> dict:
    """Run ``script`` with ``argv`` in a fresh process; its last line of output is a JSON row."""
    completed = subprocess.run([sys.executable, script, *argv], check=False, capture_output=True, text=True, env=env)
    if completed.returncode != 0:
        sys.exit(f"child {argv[:2]} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def load_line(label: str) -> tuple[str, float]:
    one, five, fifteen = os.getloadavg()
    return f"load average {label}: {one:.2f} {five:.2f} {fifteen:.2f}", one


def spread(values: list[float], digits: int = 0) -> str:
    """min / median / max."""
    return " / ".join(f"{v:,.{digits}f}" for v in (min(values), statistics.median(values), max(values)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="default: a GPT-2-small-shaped random model")
    parser.add_argument("--max-tokens", type=int, default=20_000, help="tokens of the speed rounds")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds of every approach")
    parser.add_argument("--approaches", nargs="+", choices=APPROACHES, default=list(DEFAULT_APPROACHES),
                        help="tnb-mmap4 and tnb-jemalloc run only when named (see above; default: %(default)s)")
    parser.add_argument("--memory-tokens", type=int, nargs="*", default=[5_000, 20_000],
                        help="tnb's and the bare passes' peak RSS at each of these sizes (the speed rounds' size is reused)")
    parser.add_argument("--memory-repeats", type=int, default=3,
                        help="interleaved runs of every approach at each --memory-tokens size")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--child", choices=(*APPROACHES, "make-model"), help=argparse.SUPPRESS)
    parser.add_argument("--lake", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.repeats < 1 or args.memory_repeats < 1:
        parser.error(f"--repeats and --memory-repeats should be >= 1. Got {args.repeats} and {args.memory_repeats} instead.")

    if args.child == "make-model":
        make_gpt2_small(args.lake)
        print(json.dumps({}))
        return
    if args.child:
        sizes = (args.model, args.lake, args.max_tokens, args.seq_len)
        if args.child == "study":
            result = child_study(*sizes, args.lake / "study.npz")
        elif args.child in ("bare", "bare-heap"):
            result = child_bare(*sizes, args.batch_size, heap=args.child == "bare-heap")
        else:
            result = child_tnb(*sizes, args.batch_size, SMALL_MMAP_THRESHOLD if args.child == "tnb-mmap4" else None)
        result.setdefault("peak_rss_mb", memory_mb()[1])
        result["allocator"] = process_allocator()
        print(json.dumps(result))
        return

    cores = os.cpu_count() or 1
    before, load_before = load_line("before")
    print(before, f"({cores} cores)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:  # made in a child, so this parent stays small
            model = str(Path(tmp) / "gpt2-small-random")
            run_child(["--child", "make-model", "--lake", model])

        def run(approach: str, tokens: int, label: str) -> dict:
            lake = Path(tempfile.mkdtemp(dir=tmp))
            env = preload_environ(os.environ, jemalloc()) if approach == "tnb-jemalloc" else None
            row = run_child(["--child", approach, "--model", model, "--lake", str(lake), "--max-tokens", str(tokens),
                             "--seq-len", str(args.seq_len), "--batch-size", str(args.batch_size)], env)
            if (row["allocator"] == "jemalloc") != (approach == "tnb-jemalloc"):
                sys.exit(f"{approach}: ran with {row['allocator']}'s malloc")
            row["load_avg"] = os.getloadavg()[0]
            print(f"  {label} {approach:5s} {tokens:6d} tok: {row['tokens'] / row['seconds']:6.0f} tok/s, "
                  f"peak {row['peak_rss_mb']:5.0f} MB (model {row['model_rss_mb']:5.0f} MB), "
                  f"load avg {row['load_avg']:.2f}", file=sys.stderr, flush=True)
            subprocess.run(["rm", "-rf", str(lake)], check=False)
            return row

        rows: dict[str, list[dict]] = {approach: [] for approach in args.approaches}
        for repeat in range(args.repeats):
            for approach in args.approaches:
                rows[approach].append(run(approach, args.max_tokens, f"round {repeat + 1}"))
        # peak memory at every size, of tnb and of the bare pass beside it (whose own peak is the allowance)
        memory: dict[str, dict[int, list[dict]]] = {}
        for approach in [a for a in ("bare", "bare-heap", "tnb", "tnb-mmap4", "tnb-jemalloc") if a in args.approaches]:
            memory[approach] = {args.max_tokens: rows[approach]}
        for repeat in range(args.memory_repeats):  # interleaved: approach after approach, size after size
            for tokens in args.memory_tokens:
                for approach in memory:
                    if tokens != args.max_tokens:  # the speed rounds' runs are that size's
                        memory[approach].setdefault(tokens, []).append(run(approach, tokens, f"memory {repeat + 1}"))
    after, load_after = load_line("after")
    report(args, model, rows, memory, before, after, load_before, load_after, cores)


def report(args, model, rows, memory, before, after, load_before, load_after, cores) -> None:
    def rate(row: dict) -> float:
        return row["tokens"] / row["seconds"]

    name = args.model or "GPT-2-small shape, random weights"
    print(f"\nmodel: {name}; {args.max_tokens:,} tokens in sequences of {args.seq_len}, batches of "
          f"{args.batch_size}; {args.repeats} interleaved rounds; {before}; {after}")
    busy = load_before > 0.5 * cores or load_after > 1.5 * cores
    if busy:
        print(f"NOTE: the machine was busy (1-min load {load_before:.2f} before, {load_after:.2f} after, {cores} cores): "
              "other jobs shared the cores, so absolute figures are low and noisy; read the ratios of medians.")
    print("\n| approach | tokens/s (min / median / max) | CPU s per 1,000 tokens | peak RSS MB | "
          "peak RSS above the loaded model MB | load s | tokenize s |")
    print("|---|---|---|---|---|---|---|")
    for approach, runs in rows.items():
        print(f"| {approach} | {spread([rate(r) for r in runs])} | {spread([1000 * r['cpu_s'] / r['tokens'] for r in runs], 2)} | "
              f"{spread([r['peak_rss_mb'] for r in runs])} | "
              f"{spread([r['peak_rss_mb'] - r['model_rss_mb'] for r in runs])} | {spread([r['load_s'] for r in runs], 1)} | "
              f"{spread([r['tokenize_s'] for r in runs], 1)} |")
    medians = {approach: statistics.median(rate(r) for r in runs) for approach, runs in rows.items()}
    if "tnb" in medians and "bare" in medians:
        print(f"\ntokens/s, ratio of medians tnb / bare forward pass: {medians['tnb'] / medians['bare']:.3f}x (goal >= 0.95x)")
        cpu = {a: statistics.median(r["cpu_s"] / r["tokens"] for r in rows[a]) for a in ("tnb", "bare")}
        print(f"CPU time per token, ratio of medians tnb / bare: {cpu['tnb'] / cpu['bare']:.3f}x (the work writing adds; "
              "on a machine whose cores are all busy, tokens/s cannot beat its inverse)")
    if "tnb" in medians and "bare-heap" in medians:
        print(f"tokens/s, ratio of medians tnb / bare forward pass under tnb's heap policy: "
              f"{medians['tnb'] / medians['bare-heap']:.3f}x")
    if "tnb" in medians and "tnb-mmap4" in medians:
        print(f"tokens/s, ratio of medians tnb with a 4 MiB mmap threshold / tnb: "
              f"{medians['tnb-mmap4'] / medians['tnb']:.3f}x")
    if "tnb" in medians and "tnb-jemalloc" in medians:
        print(f"tokens/s, ratio of medians tnb under jemalloc / tnb: {medians['tnb-jemalloc'] / medians['tnb']:.3f}x")
    if "tnb" in medians and "study" in medians:
        print(f"tokens/s, ratio of medians tnb / study: {medians['tnb'] / medians['study']:.2f}x (goal >= 1.5x)")
    if rows.get("tnb"):
        runs = rows["tnb"]
        total = statistics.median(r["seconds"] for r in runs)
        print(f"\ntnb's time (median of {len(runs)}; pass {total:.1f} s; model load "
              f"{statistics.median(r['load_s'] for r in runs):.1f} s and tokenization "
              f"{statistics.median(r['tokenize_s'] for r in runs):.1f} s not in the pass):")
        for stage in STAGES:
            note = " (writer thread, overlaps the forward pass)" if stage == "write" else ""
            print(f"  {stage:8s} {statistics.median(r['split'][stage] for r in runs):7.2f} s{note}")
        other = total - statistics.median(sum(r["split"][s] for s in STAGES if s != "write") for r in runs)
        print(f"  {'other':8s} {other:7.2f} s (token read, batching, locks, models row)")
        if "bare" in rows:
            print(f"  bare forward pass, same batches: {statistics.median(r['seconds'] for r in rows['bare']):7.2f} s")
        print(f"bytes per activation on disk: tnb {runs[0]['bytes'] / runs[0]['values']:.2f}"
              + (f", study {rows['study'][0]['bytes'] / rows['study'][0]['values']:.2f}" if rows.get("study") else ""))
        batch_mb = runs[0]["batch_mb"]
        tnb_memory, bare_memory, heap_memory = memory.get("tnb", {}), memory.get("bare", {}), memory.get("bare-heap", {})

        def above(tokens: int, approach: dict[int, list[dict]]) -> list[float]:
            return [r["peak_rss_mb"] - r["model_rss_mb"] for r in approach.get(tokens, [])]

        print(f"\ntnb's memory; one batch of every layer in float32: {batch_mb:.0f} MB; the bare pass beside it "
              "(its own peak, the forward pass's transients as glibc holds them, is the allowance)")
        print("| tokens | runs | tnb peak RSS MB | model MB | tnb peak above the model MB | / one batch | "
              "bare peak above the model MB | tnb - bare, medians MB | bare under tnb's heap policy MB | "
              "tnb - that, medians MB |")
        print("|---|---|---|---|---|---|---|---|---|---|")

        def beside(ours: list[float], theirs: list[float]) -> str:
            if not theirs:
                return "- | -"
            return f"{spread(theirs)} | {statistics.median(ours) - statistics.median(theirs):+.0f}"

        for tokens, measured in sorted(tnb_memory.items()):
            ours = above(tokens, tnb_memory)
            print(f"| {tokens:,} | {len(measured)} | {spread([r['peak_rss_mb'] for r in measured])} | "
                  f"{spread([r['model_rss_mb'] for r in measured])} | {spread(ours)} | "
                  f"{statistics.median(ours) / batch_mb:.1f}x | {beside(ours, above(tokens, bare_memory))} | "
                  f"{beside(ours, above(tokens, heap_memory))} |")
        sizes = sorted(tnb_memory)
        if len(sizes) > 1:
            first, last = sizes[0], sizes[-1]

            def growth(approach: dict[int, list[dict]]) -> float:
                return statistics.median(above(last, approach)) - statistics.median(above(first, approach))

            whole = (statistics.median(r["peak_rss_mb"] for r in tnb_memory[last])
                     - statistics.median(r["peak_rss_mb"] for r in tnb_memory[first]))
            print(f"growth {first:,} -> {last:,} tokens of tnb's peak above the model: {growth(tnb_memory):+.0f} MB "
                  f"(goal <= +50 MB); of its whole peak RSS: {whole:+.0f} MB (it includes the token stream and "
                  "Python objects read before the model, which the model column also holds)")
            for approach, by_size in memory.items():
                if approach != "tnb" and all(by_size.get(tokens) for tokens in (first, last)):
                    print(f"the same growth of {approach}'s peak above the model: {growth(by_size):+.0f} MB")
        batch_peaks_report(memory)


def batch_peaks_report(memory: dict[str, dict[int, list[dict]]]) -> None:
    """Every batch's own peak above the model, at the largest size: their spread, and the
    drift from the first quarter of a run's batches to its last (median of runs)."""
    lines = []
    for approach, by_size in memory.items():
        if not by_size:
            continue
        tokens = max(by_size)
        runs = [r for r in by_size[tokens] if len(r.get("batch_peaks_mb", [])) >= 8]
        if not runs:
            continue
        above = [[peak - r["model_rss_mb"] for peak in r["batch_peaks_mb"]] for r in runs]
        every = [peak for run in above for peak in run]
        drift = [statistics.median(run[-(len(run) // 4):]) - statistics.median(run[: len(run) // 4]) for run in above]
        lines.append(f"| {approach} | {tokens:,} | {len(runs)} x {statistics.median(len(run) for run in above):.0f} | "
                     f"{spread(every)} | {statistics.median(every) - min(every):.0f} | "
                     f"{max(every) - statistics.median(every):.0f} | {spread(drift)} |")
    if lines:
        print("\nevery batch's own peak RSS above the model (VmHWM reset after each batch), at the largest size: "
              "a run's peak is the highest of these, so it grows with tokens only if they drift upwards, and "
              "otherwise by chance (more batches, more draws from the same spread)")
        print("| approach | tokens | runs x batches | per-batch peak MB (min / median / max) | median - min | "
              "max - median | drift, last quarter - first quarter of a run, medians MB (min / median / max) |")
        print("|---|---|---|---|---|---|---|")
        print("\n".join(lines))


if __name__ == "__main__":
    main()
