"""Extraction benchmark: tnb's extractor against the study's approach, side by side in one run.

Both run the same model over the same token stream, each in a fresh child process so
that peak RSS is its own:

- study: the plain HF model *with* its LM head, batch size 1, ``output_hidden_states``,
  every layer kept in RAM as float32, saved with ``np.savez_compressed``;
- tnb: :func:`tnb.extract.extract_activations` (base model, batched, streamed to the lake
  as float16 Parquet, zstd).

It prints tokens/s, peak RSS and bytes per activation on disk, and the ratios. Peak RSS
is also measured at a quarter of the tokens, to show whether it grows with layers x tokens.

    python bench/extract.py                       # GPT-2-small shape (12 x 768), random weights
    python bench/extract.py --model minilm        # the offline pretrained model
    python bench/extract.py --model smollm2 --max-tokens 4096   # the GGUF decoder (30 layers)

tnb's tokens/s leaves out loading the model (timed separately as ``load_s``: a GGUF
checkpoint is dequantised on load), as the study's does.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_gpt2_small(directory: Path) -> Path:
    """A GPT-2-small-shaped model (12 layers, 768 wide) with random weights, saved to disk."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config()).save_pretrained(directory)
    return directory


def peak_rss_mb() -> float:
    """This process's own peak resident memory (VmHWM; ru_maxrss would include the parent's at fork)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_study(model: str, lake: Path, max_tokens: int, seq_len: int, out: Path) -> dict:
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    from tnb.extract import ensure_token_stream
    from tnb.lake import Lake, partition_key
    from tnb.models import load_config, load_tokenizer, resolve_model

    spec = resolve_model(model)
    name, tokenizer = load_tokenizer(spec)
    stream = ensure_token_stream(Lake(lake), None, name, tokenizer, max_tokens, seq_len)
    tokens = Lake(lake).read(partition_key("tokens", stream=stream))
    token_ids, seq_ids = tokens["token_id"].to_numpy(), tokens["seq_id"].to_numpy()
    head_class = AutoModelForMaskedLM if load_config(spec).model_type == "bert" else AutoModelForCausalLM
    lm = head_class.from_pretrained(spec.source, **spec.load_kwargs()).eval()
    start = time.perf_counter()
    layers: dict[int, list] = {}
    with torch.no_grad():
        for seq in np.unique(seq_ids):
            ids = torch.tensor(token_ids[seq_ids == seq][None].astype(np.int64))
            for layer, state in enumerate(lm(ids, output_hidden_states=True).hidden_states):
                layers.setdefault(layer, []).append(state[0].numpy().astype(np.float32))
    arrays = {f"layer_{layer}": np.concatenate(chunks) for layer, chunks in layers.items()}
    np.savez_compressed(out, **arrays)
    seconds = time.perf_counter() - start
    n_values = sum(a.size for a in arrays.values())
    return {"seconds": seconds, "bytes": out.stat().st_size, "values": n_values, "tokens": len(token_ids)}


def child_tnb(model: str, lake: Path, max_tokens: int, seq_len: int, batch_size: int) -> dict:
    import tnb.extract
    from tnb.extract import ensure_token_stream, extract_activations
    from tnb.lake import Lake
    from tnb.models import load_tokenizer, resolve_model

    spec = resolve_model(model)
    name, tokenizer = load_tokenizer(spec)
    target = Lake(lake)
    stream = ensure_token_stream(target, None, name, tokenizer, max_tokens, seq_len)
    load_model, load_seconds = tnb.extract.load_model, []

    def timed_load(*args, **kwargs):  # the model load is reported apart from the pass
        begin = time.perf_counter()
        loaded = load_model(*args, **kwargs)
        load_seconds.append(time.perf_counter() - begin)
        return loaded

    tnb.extract.load_model = timed_load
    start = time.perf_counter()
    result = extract_activations(target, spec, stream, ("resid",), None, batch_size=batch_size, progress=False)
    seconds = time.perf_counter() - start - sum(load_seconds)
    files = list((Path(lake) / "activations").rglob("*.parquet"))
    n_values = sum(target.read_layer(spec.name, "resid", layer).size for layer in range(result.n_layers + 1))
    return {"seconds": seconds, "load_s": sum(load_seconds), "bytes": sum(f.stat().st_size for f in files),
            "values": n_values, "tokens": max_tokens}


def run_child(argv: list[str]) -> dict:
    completed = subprocess.run([sys.executable, __file__, *argv], check=True, capture_output=True, text=True)
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="default: a GPT-2-small-shaped random model")
    parser.add_argument("--max-tokens", type=int, default=20_000)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--child", choices=("study", "tnb", "make-model"), help=argparse.SUPPRESS)
    parser.add_argument("--lake", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child == "make-model":
        make_gpt2_small(args.lake)
        print(json.dumps({}))
        return
    if args.child:
        if args.child == "study":
            result = child_study(args.model, args.lake, args.max_tokens, args.seq_len, args.lake / "study.npz")
        else:
            result = child_tnb(args.model, args.lake, args.max_tokens, args.seq_len, args.batch_size)
        result["peak_rss_mb"] = peak_rss_mb()
        print(json.dumps(result))
        return

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:  # made in a child, so this parent stays small
            model = str(Path(tmp) / "gpt2-small-random")
            run_child(["--child", "make-model", "--lake", model])
        rows = {}
        for approach in ("study", "tnb"):
            for tokens in (args.max_tokens // 4, args.max_tokens):
                lake = Path(tmp) / f"{approach}-{tokens}"
                argv = ["--child", approach, "--model", model, "--lake", str(lake), "--max-tokens", str(tokens),
                        "--seq-len", str(args.seq_len), "--batch-size", str(args.batch_size)]
                rows[(approach, tokens)] = run_child(argv)
                print(f"  {approach:5s} {tokens:6d} tokens: {rows[(approach, tokens)]}", file=sys.stderr)
    full, quarter = args.max_tokens, args.max_tokens // 4
    print(f"\nmodel: {args.model or 'GPT-2-small shape, random weights'}; {full} tokens, sequences of {args.seq_len}")
    print(f"| approach | tokens/s | peak RSS at {quarter} tok (MB) | peak RSS at {full} tok (MB) | bytes/activation |")
    print("|---|---|---|---|---|")
    for approach in ("study", "tnb"):
        r, q = rows[(approach, full)], rows[(approach, quarter)]
        print(f"| {approach} | {r['tokens'] / r['seconds']:.0f} | {q['peak_rss_mb']:.0f} | {r['peak_rss_mb']:.0f} | "
              f"{r['bytes'] / r['values']:.2f} |")
    s, t = rows[("study", full)], rows[("tnb", full)]
    print(f"\ntokens/s ratio tnb/study: {(t['tokens'] / t['seconds']) / (s['tokens'] / s['seconds']):.2f}x (goal >= 1.5x)")
    print(f"peak RSS growth {quarter}->{full} tokens: study {s['peak_rss_mb'] - rows[('study', quarter)]['peak_rss_mb']:+.0f} MB, "
          f"tnb {t['peak_rss_mb'] - rows[('tnb', quarter)]['peak_rss_mb']:+.0f} MB")
    print(f"bytes per activation: tnb {t['bytes'] / t['values']:.2f} (goal <= 2.1), study {s['bytes'] / s['values']:.2f}")


if __name__ == "__main__":
    main()
