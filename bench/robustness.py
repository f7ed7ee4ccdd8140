"""Robustness tally: bad inputs handled, injected faults survived.

    python bench/robustness.py            # everything (~5-10 min on 2 cores)
    python bench/robustness.py --quick    # a few of each

Builds one reference lake without interruption (a tiny random GPT-2 on the bundled
corpus, extracted and biclustered with small settings, no Prefect), then:

- **bad inputs**: runs ``tnb ...`` (in this process, through ``tnb.cli.main``) with each
  bad input against a copy of that lake; handled = exit status 2, one ``tnb: error:``
  line on stderr, and the lake's tables byte for byte as they were.
- **faults**: kills a writer (SIGKILL) at every step of a publish, fills a small disk,
  corrupts files in place, runs two writers at once; survived = nothing was read
  silently wrong, and after the same command again (or ``tnb verify --repair``) the lake
  equals the reference (labels, metrics without their ``seconds``, every other file byte
  for byte).

Prints one line per case and the tally. ``tests/test_faults.py`` runs it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ["DO_NOT_TRACK"] = "1"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("TNB_LOCK_TIMEOUT_S", "60")

N_TOKENS, SEQ_LEN = 300, 64
SMALL = {"row_ks": (2, 3), "col_ks": (2, 3), "n_null": 3, "n_seeds": 1, "n_shuffles": 0}
GRID_ARGS = ["--grid", "2", "3", "--n-null", "3", "--n-seeds", "1", "--n-shuffles", "0"]
MODEL = "tiny-gpt2"


@dataclass
class Outcome:
    kind: str  # "bad input" or "fault"
    name: str
    ok: bool
    detail: str


# ----------------------------------------------------------------------------- the reference lake
def make_model(directory: Path) -> Path:
    """A 2-layer, 32-wide GPT-2 with random weights (256 positions), saved to disk."""
    import torch
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    target = directory / MODEL
    GPT2Model(GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=256, vocab_size=50257)).save_pretrained(target)
    return target


def extract(lake_root: Path, model_dir: Path, **kwargs) -> object:
    from tnb.extract import ensure_token_stream, extract_activations
    from tnb.lake import Lake
    from tnb.models import load_tokenizer, resolve_model

    lake = Lake(lake_root)
    spec = resolve_model(str(model_dir))
    name, tokenizer = load_tokenizer(spec)
    stream = ensure_token_stream(lake, None, name, tokenizer, kwargs.pop("max_tokens", N_TOKENS), SEQ_LEN)
    return extract_activations(lake, spec, stream, ("resid",), None, progress=False, **kwargs)


def bicluster(lake_root: Path, seed: int = 0, layers=(0, 1, 2)) -> list[str]:
    from tnb.bicluster_stage import BiclusterParams, bicluster_partition
    from tnb.lake import Lake

    lake = Lake(lake_root)
    params = BiclusterParams(**SMALL, seed=seed)
    return [bicluster_partition(lake, MODEL, "resid", layer, params).status for layer in layers]


def build_reference(work: Path) -> dict[str, Path]:
    model_dir = make_model(work / "models")
    reference = work / "reference"
    extract(reference, model_dir)
    bicluster(reference)
    return {"model": model_dir, "reference": reference, "work": work}


def copy_lake(source: Path, target: Path, tables=("tokens", "models", "activations", "labels", "metrics")) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for table in tables:
        if (source / table).exists():
            shutil.copytree(source / table, target / table)
    return target


def snapshot(root: Path) -> dict[str, str]:
    import hashlib

    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(Path(root).rglob("*"))
        if path.is_file() and path.relative_to(root).parts[0] not in ("_locks", "_staging")
    }


def same_lake(lake_root: Path, reference: Path) -> str:
    """'' when the lake equals the reference; else what differs."""
    import polars as pl
    from polars.testing import assert_frame_equal

    from tnb.lake import Lake

    mine, theirs = snapshot(lake_root), snapshot(reference)
    inputs = {k: v for k, v in theirs.items() if k.split("/")[0] in ("tokens", "models", "activations")}
    differ = sorted(k for k in inputs if mine.get(k) != inputs[k])
    if differ:
        return f"input files differ: {differ[:3]}"
    for table, drop in (("labels", []), ("metrics", ["seconds"])):
        keys = ["model", "site", "layer", "method", "drop_first", "row_k", "col_k"] + (
            ["axis", "index"] if table == "labels" else []
        )
        try:
            a = Lake(lake_root, read_only=True).scan(table).drop(drop).collect().sort(keys)
            b = Lake(reference, read_only=True).scan(table).drop(drop).collect().sort(keys)
            assert_frame_equal(a, b)
        except Exception as error:  # noqa: BLE001  (any difference is the answer)
            return f"{table} differ: {str(error).splitlines()[0][:120]}"
    staged = list((Path(lake_root) / "_staging").glob("*")) if (Path(lake_root) / "_staging").exists() else []
    if staged and not any(p.name.startswith(".probe") for p in staged):
        Lake(lake_root)  # cleans what dead writers left
        left = list((Path(lake_root) / "_staging").glob("*"))
        if left:
            return f"staged files left: {[p.name for p in left]}"
    del pl
    return ""


# ----------------------------------------------------------------------------- bad inputs
def run_cli(argv: list[str]) -> tuple[int, str, str]:
    from tnb.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 2
        except BaseException as error:  # noqa: BLE001  (a traceback is what this counts)
            code, err = 1, io.StringIO(f"{type(error).__name__}: {error}\n")
    return code, out.getvalue(), err.getvalue()


def bad_inputs(ctx: dict[str, Path]) -> list[tuple[str, list[str]]]:
    """(name, argv) of every bad input; {lake}, {model}, {files} are filled in from ``ctx``."""
    lake, model, files = str(ctx["lake"]), str(ctx["model"]), ctx["files"]
    ex = ["extract", "--lake", lake, "--model", model, "--max-tokens", str(N_TOKENS), "--seq-len", str(SEQ_LEN)]
    bc = ["bicluster", "--lake", lake, "--serial", *GRID_ARGS]
    run = ["run", "--lake", lake, "--model", model, "--max-tokens", str(N_TOKENS), "--seq-len", str(SEQ_LEN), "--serial"]
    q = ["query", "--lake", lake]
    empty = str(files / "empty-lake")  # a lake without activations or metrics
    return [
        ("extract --max-tokens 0", [*ex, "--max-tokens", "0"]),
        ("extract --max-tokens -5", [*ex, "--max-tokens", "-5"]),
        ("extract --max-tokens abc", [*ex, "--max-tokens", "abc"]),
        ("extract --seq-len 0", [*ex, "--seq-len", "0"]),
        ("extract --seq-len > --max-tokens", [*ex, "--max-tokens", "100", "--seq-len", "200"]),
        ("extract --seq-len beyond the positions", [*ex, "--max-tokens", "1000", "--seq-len", "512"]),
        ("extract --model missing directory", [*ex, "--model", str(files / "no-such-model")]),
        ("extract --model directory without config.json", [*ex, "--model", str(files / "not-a-model")]),
        ("extract --model hub id not cached", [*ex, "--model", "nobody/no-such-model-xyz"]),
        ("extract --model truncated weights", [*ex, "--model", str(files / "truncated" / MODEL)]),
        ("extract --model empty weights", [*ex, "--model", str(files / "empty" / MODEL)]),
        ("extract --layers 99", [*ex, "--layers", "99"]),
        ("extract --layers -1", [*ex, "--layers", "-1"]),
        ("extract --layers x", [*ex, "--layers", "x"]),
        ("extract --site foo", [*ex, "--site", "foo"]),
        ("extract --dtype float8", [*ex, "--dtype", "float8"]),
        ("extract --batch-size 0", [*ex, "--batch-size", "0"]),
        ("extract --corpus missing file", [*ex, "--corpus", str(files / "missing.jsonl")]),
        ("extract --corpus empty .txt", [*ex, "--corpus", str(files / "empty.txt")]),
        ("extract --corpus empty directory", [*ex, "--corpus", str(files / "empty-dir")]),
        ("extract --corpus unsupported .csv", [*ex, "--corpus", str(files / "corpus.csv")]),
        ("extract --text-column missing", [*ex, "--corpus", str(files / "corpus.jsonl"), "--text-column", "body"]),
        ("extract --corpus invalid JSON lines", [*ex, "--corpus", str(files / "broken.jsonl")]),
        ("extract --max-documents 0", [*ex, "--max-documents", "0"]),
        ("extract --corpus-config without --corpus", [*ex, "--corpus-config", "20231101.en"]),
        ("extract another --max-tokens, no --overwrite", [*ex, "--max-tokens", "200"]),
        ("extract --lake under /proc", [*ex, "--lake", "/proc/tnb-lake"]),
        ("extract --lake is a file", [*ex, "--lake", str(files / "corpus.jsonl")]),
        ("extract unknown option", [*ex, "--frobnicate"]),
        ("ingest --seq-len > --max-tokens", ["ingest", "--lake", lake, "--max-tokens", "10", "--seq-len", "20"]),
        ("bicluster --grid 1 2", [*bc, "--grid", "1", "2"]),
        ("bicluster --grid 0", [*bc, "--grid", "0"]),
        ("bicluster --grid 2 40 (k >= neurons)", [*bc, "--grid", "2", "40"]),
        ("bicluster --grid x", [*bc, "--grid", "x"]),
        ("bicluster --n-null 1", [*bc, "--n-null", "1"]),
        ("bicluster --n-seeds 0", [*bc, "--n-seeds", "0"]),
        ("bicluster --n-shuffles -1", [*bc, "--n-shuffles", "-1"]),
        ("bicluster --alpha 2", [*bc, "--alpha", "2"]),
        ("bicluster --min-stability 5", [*bc, "--min-stability", "5"]),
        ("bicluster --seed -1", [*bc, "--seed", "-1"]),
        ("bicluster --drop-first -1", [*bc, "--drop-first", "-1"]),
        ("bicluster --method kmeans", [*bc, "--method", "kmeans"]),
        ("bicluster --selection max", [*bc, "--selection", "max"]),
        ("bicluster --null shuffle", [*bc, "--null", "shuffle"]),
        ("bicluster --null-chunk 0", [*bc, "--null-chunk", "0"]),
        ("bicluster --model not in the lake", [*bc, "--model", "gpt2-xl"]),
        ("bicluster --layers 99", [*bc, "--layers", "99"]),
        ("bicluster --seed 1 (another config), no --overwrite", [*bc, "--seed", "1"]),
        ("bicluster misspelled --lake", ["bicluster", "--lake", str(files / "lkae"), "--serial", *GRID_ARGS]),
        ("bicluster --dask-address nobody answers", [*bc, "--dask-address", "tcp://127.0.0.1:1"]),
        ("bicluster --dask-address not an address", [*bc, "--dask-address", "http://x"]),
        ("run --grid 1 2", [*run, "--grid", "1", "2"]),
        ("run --stages foo", [*run, "--stages", "foo"]),
        ("run --model missing directory", [*run, "--model", str(files / "no-such-model")]),
        ("run --seq-len beyond the positions", [*run, "--max-tokens", "1000", "--seq-len", "512"]),
        ("run --dask-address nobody answers", [*run, *GRID_ARGS, "--dask-address", "tcp://127.0.0.1:1"]),
        ("run --n-null 0", [*run, "--n-null", "0"]),
        ("run --grid 2 40 (k >= neurons)", [*run, "--grid", "2", "40"]),
        ("run --corpus invalid JSON lines", [*run, *GRID_ARGS, "--corpus", str(files / "broken.jsonl")]),
        ("run --stages bicluster, no activations", [*run, *GRID_ARGS, "--lake", empty, "--stages", "bicluster"]),
        ("run --stages analyze, no metrics", [*run, *GRID_ARGS, "--lake", empty, "--stages", "analyze"]),
        ("query unknown name", [*q, "no_such_query"]),
        ("query bad SQL", [*q, "SELEC * FROM metrics"]),
        ("query unknown table", [*q, "SELECT * FROM nope"]),
        ("query empty", [*q, ""]),
        ("query --param unknown", [*q, "top_tokens", "-p", "bogus=1"]),
        ("query --param layer=abc", [*q, "top_tokens", "-p", "layer=abc"]),
        ("query --format parquet without --out", [*q, "top_tokens", "--format", "parquet"]),
        ("query --out a directory", [*q, "SELECT model FROM metrics", "--out", str(files)]),
        ("query read_ipc on a non-IPC file", [*q, f"SELECT * FROM read_ipc('{files / 'corpus.jsonl'}')"]),
        ("query --lake-only read_csv", [*q, "--lake-only", "SELECT * FROM read_csv('/etc/passwd')"]),
        ("query --lake-only URL", [*q, "--lake-only", "SELECT * FROM read_parquet('http://127.0.0.1:9/x')"]),
        ("query misspelled --lake", ["query", "--lake", str(files / "lkae"), "SELECT * FROM metrics"]),
        ("query activation_cells without a layer", [*q, "SELECT * FROM activation_cells"]),
        ("report --out a file", ["report", "--lake", lake, "--out", str(files / "corpus.jsonl")]),
        ("report --out inside the lake", ["report", "--lake", lake, "--out", str(Path(lake) / "metrics")]),
        ("report --out the lake itself", ["report", "--lake", lake, "--out", lake]),
        ("report misspelled --lake", ["report", "--lake", str(files / "lkae"), "--out", str(files / "r")]),
        ("report --drop-first not in the lake", ["report", "--lake", lake, "--out", str(files / "r"), "--drop-first", "7"]),
        ("verify misspelled --lake", ["verify", "--lake", str(files / "lkae")]),
        ("no command", []),
        ("unknown command", ["frobnicate"]),
    ]


def prepare_files(files: Path, model_dir: Path) -> None:
    files.mkdir(parents=True, exist_ok=True)
    (files / "not-a-model").mkdir()
    (files / "empty.txt").write_text("")
    (files / "empty-dir").mkdir()
    (files / "corpus.csv").write_text("text\nhello\n")
    (files / "corpus.jsonl").write_text("\n".join(json.dumps({"text": f"doc {i} " * 20}) for i in range(5)))
    (files / "broken.jsonl").write_text('{"text": "ok"}\n{not json\n')
    for how in ("truncated", "empty"):
        target = files / how / MODEL
        shutil.copytree(model_dir, target)
        weights = target / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2] if how == "truncated" else b"")


def check_bad_inputs(ctx: dict[str, Path], quick: bool = False) -> list[Outcome]:
    work = ctx["work"] / "bad-inputs"
    lake = copy_lake(ctx["reference"], work / "lake")
    files = work / "files"
    prepare_files(files, ctx["model"])
    cases = bad_inputs({"lake": lake, "model": ctx["model"], "files": files})
    if quick:
        cases = cases[::8]
    outcomes = []
    for name, argv in cases:
        before = snapshot(lake)
        code, _, err = run_cli(argv)
        lines = err.strip().splitlines()
        changed = snapshot(lake) != before
        ok = code == 2 and len(lines) == 1 and lines[0].startswith("tnb: error: ") and not changed
        detail = (lines[-1] if lines else "(no message)")[:150] + (" [LAKE CHANGED]" if changed else "")
        if not ok:
            detail = f"exit {code}, {len(lines)} stderr lines: {detail}"
        outcomes.append(Outcome("bad input", name, ok, detail))
        if changed:
            shutil.rmtree(lake)
            copy_lake(ctx["reference"], lake)
    return outcomes


# ----------------------------------------------------------------------------- faults
_CHILD = """
import sys
sys.path.insert(0, {root!r})
sys.argv = ["robustness"]
import bench.robustness as r
from pathlib import Path
what = {what!r}
if what == "extract":
    r.extract(Path({lake!r}), Path({model!r}))
else:
    r.bicluster(Path({lake!r}), seed={seed})
print("finished")
"""


def _child(what: str, lake: Path, model: Path, fault: str | None = None, seed: int = 0) -> subprocess.Popen:
    env = dict(os.environ)
    env.pop("TNB_FAULT_AT", None)
    if fault:
        env["TNB_FAULT_AT"] = fault
    code = _CHILD.format(root=str(ROOT), what=what, lake=str(lake), model=str(model), seed=seed)
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def fault_kill(ctx: dict[str, Path], stage: str, step: str, table: str) -> tuple[bool, str]:
    """SIGKILL a writer at one publish step, then run the same command again."""
    lake = ctx["work"] / f"kill-{stage}-{step}-{table}"
    copy_lake(ctx["reference"], lake, ("tokens",) if stage == "extract" else ("tokens", "models", "activations"))
    child = _child(stage, lake, ctx["model"], fault=f"{step}:{table}")
    _, err = child.communicate(timeout=600)
    if child.returncode != -9:
        return False, f"the writer was not killed (exit {child.returncode}): {err.strip()[-200:]}"
    if stage == "extract":
        extract(lake, ctx["model"])
    bicluster(lake)
    difference = same_lake(lake, ctx["reference"])
    return not difference, difference or "killed, re-run, equal to the reference"


def _mount_small_disk(path: Path) -> bool:
    """A 4 MiB tmpfs at ``path`` (needs root); False when it cannot be mounted."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(path)], capture_output=True).returncode == 0


def _fill(path: Path, free_bytes: int) -> None:
    """Fill the disk at ``path`` until only about ``free_bytes`` are left."""
    filler = path / "filler"
    with contextlib.suppress(OSError), filler.open("wb", buffering=0) as handle:
        while True:
            handle.write(b"\0" * 4096)
    size = filler.stat().st_size
    filler.unlink()
    with contextlib.suppress(OSError), filler.open("wb", buffering=0) as handle:
        handle.write(b"\0" * max(0, size - free_bytes))


def _run_stage(stage: str, lake: Path, ctx: dict[str, Path], report: Path) -> str:
    """Run a stage; '' when it finished, else its one-line error (a raw traceback raises)."""
    from tnb.errors import TnbError

    if stage == "report":
        code, _, err = run_cli(["report", "--lake", str(lake), "--out", str(report)])
        lines = err.strip().splitlines()
        if code == 0:
            return ""
        if code == 2 and len(lines) == 1:
            return lines[0]
        raise RuntimeError(f"report on a full disk: exit {code}, {len(lines)} lines: {err.strip()[-200:]}")
    try:
        if stage == "extract":
            extract(lake, ctx["model"])
        bicluster(lake)
    except TnbError as error:
        return str(error)
    return ""


def fault_disk_full(ctx: dict[str, Path], stage: str) -> tuple[bool, str]:
    mount = ctx["work"] / f"disk-{stage}"
    if not _mount_small_disk(mount):
        return True, "skipped: mounting a small tmpfs needs root"
    try:
        lake = mount / "lake"
        tables = {"extract": ("tokens",), "bicluster": ("tokens", "models", "activations")}.get(
            stage, ("tokens", "models", "activations", "labels", "metrics"))
        copy_lake(ctx["reference"], lake, tables)
        before = snapshot(lake)
        _fill(mount, 6_000)
        message = _run_stage(stage, lake, ctx, mount / "report")
        if not message:
            return False, "no error on a full disk"
        after = snapshot(lake)
        if any(after.get(name) != digest for name, digest in before.items()):
            return False, "complete partitions changed on a full disk"
        (mount / "filler").unlink()
        if _run_stage(stage, lake, ctx, mount / "report"):
            return False, "the re-run after freeing space failed"
        difference = same_lake(lake, ctx["reference"])
        if stage == "report" and not (mount / "report" / "index.html").exists():
            difference = "no report after freeing space"
        return not difference, difference or f"one error ({message[:80]}), then equal to the reference"
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fault_corrupt(ctx: dict[str, Path], table: str, how: str) -> tuple[bool, str]:
    """Corrupt one file in place: every read must fail loudly; verify --repair (then the stage) restores it."""
    from tnb.errors import LakeError
    from tnb.lake import Lake

    lake_root = copy_lake(ctx["reference"], ctx["work"] / f"corrupt-{table}-{how}")
    lake = Lake(lake_root)
    key = lake.partitions(table)[-1]
    data = lake.partition_dir(key) / "part-0.parquet"
    manifest = data.parent / "_manifest.json"
    content = bytearray(data.read_bytes())
    if how == "flip":
        offset = min(64, len(content) // 2)
        content[offset : offset + 16] = bytes(255 - b for b in content[offset : offset + 16])
        data.write_bytes(bytes(content))
    elif how == "truncate":
        data.write_bytes(bytes(content[: len(content) // 2]))
    elif how == "no-manifest":
        manifest.unlink()
    elif how == "rows":
        values = json.loads(manifest.read_text())
        values["rows"] += 1
        manifest.write_text(json.dumps(values))
    try:
        lake.read(key)
        return False, "a corrupt partition was read without an error"
    except LakeError:
        pass
    code, out, _ = run_cli(["verify", "--lake", str(lake_root), "--repair"])
    if table == "tokens":  # cannot be recomputed: removed, and the stage makes it again
        extract(lake_root, ctx["model"])
        bicluster(lake_root)
    difference = same_lake(lake_root, ctx["reference"])
    return not difference, difference or f"detected on read, repaired (verify exit {code})"


def fault_two_writers(ctx: dict[str, Path], stage: str, seeds: tuple[int, int]) -> tuple[bool, str]:
    lake = copy_lake(ctx["reference"], ctx["work"] / f"two-{stage}-{seeds[1]}",
                     ("tokens",) if stage == "extract" else ("tokens", "models", "activations"))
    children = [_child(stage, lake, ctx["model"], seed=seed) for seed in seeds]
    results = [child.communicate(timeout=900) for child in children]
    codes = [child.returncode for child in children]
    if seeds[0] == seeds[1]:
        if codes != [0, 0]:
            return False, f"exit {codes}: {[err.strip()[-150:] for _, err in results]}"
        if stage == "extract":
            bicluster(lake)
        difference = same_lake(lake, ctx["reference"])
        return not difference, difference or "both finished; the lake equals the reference"
    failed = [err for child, (_, err) in zip(children, results, strict=True) if child.returncode != 0]
    if len(failed) != 1 or "another config" not in failed[0]:
        return False, f"exit {codes}: expected exactly one clear 'another config' failure"
    from tnb.lake import Lake

    seeds_in_lake = set(Lake(lake, read_only=True).scan("metrics").collect()["seed"].to_list())
    return len(seeds_in_lake) == 1, f"one run wrote seed {seeds_in_lake}, the other failed clearly"


def faults(quick: bool = False) -> list[tuple[str, Callable[[dict[str, Path]], tuple[bool, str]]]]:
    cases: list[tuple[str, Callable[[dict[str, Path]], tuple[bool, str]]]] = []
    for step in ("staged", "unlinked", "replaced", "published"):
        cases.append((f"kill -9 extract at publish step '{step}'", lambda c, s=step: fault_kill(c, "extract", s, "activations")))
        for table in ("labels", "metrics"):
            cases.append((f"kill -9 bicluster at '{step}' of {table}", lambda c, s=step, t=table: fault_kill(c, "bicluster", s, t)))
    for stage in ("extract", "bicluster", "report"):
        cases.append((f"disk full during {stage}", lambda c, s=stage: fault_disk_full(c, s)))
    for table in ("activations", "metrics", "labels", "tokens"):
        for how in ("flip", "truncate", "no-manifest", "rows"):
            cases.append((f"corrupt {table}: {how}", lambda c, t=table, h=how: fault_corrupt(c, t, h)))
    cases.append(("two bicluster runs, same config", lambda c: fault_two_writers(c, "bicluster", (0, 0))))
    cases.append(("two bicluster runs, seeds 0 and 1", lambda c: fault_two_writers(c, "bicluster", (0, 1))))
    cases.append(("two extract runs at once", lambda c: fault_two_writers(c, "extract", (0, 0))))
    return cases[::6] if quick else cases


def check_faults(ctx: dict[str, Path], quick: bool = False) -> list[Outcome]:
    outcomes = []
    for name, inject in faults(quick):
        try:
            ok, detail = inject(ctx)
        except BaseException as error:  # noqa: BLE001  (a crash of the check is a fault not survived)
            ok, detail = False, f"{type(error).__name__}: {str(error)[:150]}"
        outcomes.append(Outcome("fault", name, ok, detail))
    return outcomes


def tally(outcomes: list[Outcome]) -> str:
    lines = []
    for kind, verb in (("bad input", "handled in one line with exit 2 and the lake unchanged"),
                       ("fault", "survived with nothing lost")):
        mine = [o for o in outcomes if o.kind == kind]
        skipped = sum(o.detail.startswith("skipped") for o in mine)
        ran = len(mine) - skipped
        line = f"{kind}s: {ran} tried, {sum(o.ok for o in mine) - skipped} {verb}"
        lines.append(line + (f" ({skipped} skipped: they need root)" if skipped else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few cases of each kind")
    parser.add_argument("--only", choices=("inputs", "faults"), default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tnb-robustness-") as tmp:
        ctx = build_reference(Path(tmp))
        outcomes = []
        if args.only != "faults":
            outcomes += check_bad_inputs(ctx, args.quick)
        if args.only != "inputs":
            outcomes += check_faults(ctx, args.quick)
        for outcome in outcomes:
            print(f"{'ok  ' if outcome.ok else 'FAIL'} {outcome.kind:9} {outcome.name}: {outcome.detail}")
        print(tally(outcomes))
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
