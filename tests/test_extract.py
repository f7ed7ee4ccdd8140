"""Extraction: parity with the model's own outputs, offline MiniLM, crash-resume, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.conftest import lake_snapshot
from tnb import cli
from tnb.errors import CorpusError, LakeError, ModelError
from tnb.extract import ensure_token_stream, extract_activations
from tnb.lake import Lake, partition_key
from tnb.models import load_tokenizer, resolve_model
from tnb.schemas import act_layout

N_TOKENS, SEQ_LEN = 300, 64  # 4 full sequences and a short one of 44


def _extract(lake: Lake, model: str, sites=("resid", "mlp"), layers=None, corpus=None, **kwargs):
    spec = resolve_model(model)
    tokenizer_name, tokenizer = load_tokenizer(spec)
    stream = ensure_token_stream(lake, corpus, tokenizer_name, tokenizer, kwargs.pop("max_tokens", N_TOKENS),
                                 kwargs.pop("seq_len", SEQ_LEN))
    return extract_activations(lake, spec, stream, sites, layers, progress=False, **kwargs)


@pytest.fixture(scope="class")
def gpt2_lake(tiny_gpt2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Lake, object]:
    lake = Lake(tmp_path_factory.mktemp("lake"))
    result = _extract(lake, str(tiny_gpt2_dir), batch_size=3)
    return lake, result


class TestGPT2Parity:
    def test_partitions_and_stream(self, gpt2_lake, tiny_gpt2_dir: Path) -> None:
        lake, result = gpt2_lake
        assert result.model == "tiny-gpt2" and result.stream == f"enwiki_sample.gpt2.{N_TOKENS}x{SEQ_LEN}"
        assert len(result.written) == 3 + 2 and result.skipped == ()
        models = lake.scan("models").collect()
        assert models["stream"].to_list() == [result.stream] and models["n_layers"].to_list() == [2]

    def test_resid_and_mlp_match_model_outputs(self, gpt2_lake, tiny_gpt2_dir: Path) -> None:
        from transformers import GPT2Model

        lake, result = gpt2_lake
        tokens = lake.read(partition_key("tokens", stream=result.stream))
        token_ids, seq_ids = tokens["token_id"].to_numpy(), tokens["seq_id"].to_numpy()
        model = GPT2Model.from_pretrained(tiny_gpt2_dir).eval()
        mlp_out: dict[int, list] = {1: [], 2: []}
        # an independent capture point: the activation module's output, one sequence at a time
        handles = [
            model.h[i].mlp.act.register_forward_hook(lambda m, a, out, i=i: mlp_out[i + 1].append(out[0]))
            for i in range(2)
        ]
        hidden: dict[int, list] = {0: [], 1: [], 2: []}
        with torch.no_grad():
            for seq in np.unique(seq_ids):
                ids = torch.tensor(token_ids[seq_ids == seq][None].astype(np.int64))
                states = model(ids, output_hidden_states=True).hidden_states
                for layer in hidden:
                    hidden[layer].append(states[layer][0])
        for handle in handles:
            handle.remove()
        for layer in (0, 1, 2):
            ours = lake.read_layer("tiny-gpt2", "resid", layer)
            theirs = torch.cat(hidden[layer]).numpy()
            assert ours.shape == (N_TOKENS, 32)
            np.testing.assert_allclose(ours, theirs, rtol=2e-3, atol=2e-3)
        for layer in (1, 2):
            ours = lake.read_layer("tiny-gpt2", "mlp", layer)
            theirs = torch.cat(mlp_out[layer]).numpy()
            assert ours.shape == (N_TOKENS, 128)
            np.testing.assert_allclose(ours, theirs, rtol=2e-3, atol=2e-3)

    def test_rerun_skips_everything(self, gpt2_lake, tiny_gpt2_dir: Path) -> None:
        lake, _ = gpt2_lake
        before = lake_snapshot(lake.root)
        again = _extract(lake, str(tiny_gpt2_dir), batch_size=3)
        assert again.written == () and len(again.skipped) == 5
        assert lake_snapshot(lake.root) == before

    def test_file_layout_and_encoding(self, gpt2_lake) -> None:
        lake, _ = gpt2_lake
        path = lake.root / "activations" / "model=tiny-gpt2" / "site=mlp" / "layer=2" / "part-0.parquet"
        metadata = pq.read_metadata(path)
        column = metadata.row_group(0).column(1)
        assert column.compression == "ZSTD"
        assert not any("DICTIONARY" in enc for enc in column.encodings if enc != "RLE")
        field = pq.read_schema(path).field("act")
        assert field.type == pa.binary(128 * 2) and act_layout(field) == (128, "float16")
        assert column.statistics is None or not column.statistics.has_min_max  # no min/max of bytes: says nothing


def test_float32_option_and_layer_subset(tiny_gpt2_dir: Path, tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    result = _extract(lake, str(tiny_gpt2_dir), sites=("resid",), layers=[2], dtype="float32")
    assert result.written == ("activations/model=tiny-gpt2/site=resid/layer=2",)
    field = pq.read_schema(lake.path(partition_key("activations", model="tiny-gpt2", site="resid", layer=2))).field("act")
    assert field.type == pa.binary(32 * 4) and act_layout(field) == (32, "float32")
    assert lake.read_layer("tiny-gpt2", "resid", 2).shape[1] == 32


def test_minilm_offline(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    result = _extract(lake, "minilm", sites=("resid", "mlp"), layers=[6], max_tokens=256, seq_len=128)
    assert result.stream == "enwiki_sample.minilm.256x128" and result.n_layers == 6
    assert lake.read_layer("minilm", "resid", 6).shape == (256, 384)
    mlp = lake.read_layer("minilm", "mlp", 6)
    assert mlp.shape == (256, 1536) and np.isfinite(mlp).all() and mlp.std() > 0


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import tnb.extract as extract
    from tnb.lake import Lake
    from tnb.models import load_tokenizer, resolve_model
    if sys.argv[3] == "crash":  # SIGKILL itself mid-pass: 4 batches into every layer's staged file
        calls, table = [0], extract._activation_table
        def dying(*args):
            calls[0] += 1
            if calls[0] == 5 * 4 + 1:
                os.kill(os.getpid(), signal.SIGKILL)
            return table(*args)
        extract._activation_table = dying
    lake = Lake(sys.argv[1]); spec = resolve_model(sys.argv[2])
    name, tok = load_tokenizer(spec)
    stream = extract.ensure_token_stream(lake, None, name, tok, 1024, 64)
    extract.extract_activations(lake, spec, stream, ("resid", "mlp"), None, batch_size=1, progress=False)
    """
)


def _manifest_checksums(root: Path) -> dict[str, str]:
    return {
        p.parent.relative_to(root).as_posix(): json.loads(p.read_text())["sha256"]
        for p in sorted(root.rglob("_manifest.json"))
    }


def test_kill_9_mid_extraction_then_rerun_matches_clean_run(tiny_gpt2_dir: Path, tmp_path: Path) -> None:
    crashed, clean = tmp_path / "crashed", tmp_path / "clean"
    killed = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(crashed), str(tiny_gpt2_dir), "crash"])
    assert killed.returncode == -signal.SIGKILL
    staged = crashed / "_staging"
    assert len(list(staged.glob("*.parquet"))) == 5  # five layers were half-written when it died
    assert not list((crashed / "activations").rglob("*.parquet"))  # and none of them is visible
    subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(crashed), str(tiny_gpt2_dir), "resume"], check=True)
    clean_lake = Lake(clean)  # the same run, uninterrupted, in this process
    spec = resolve_model(str(tiny_gpt2_dir))
    name, tokenizer = load_tokenizer(spec)
    stream = ensure_token_stream(clean_lake, None, name, tokenizer, 1024, 64)
    extract_activations(clean_lake, spec, stream, ("resid", "mlp"), None, batch_size=1, progress=False)
    assert _manifest_checksums(crashed) == _manifest_checksums(clean)
    assert len(_manifest_checksums(clean)) == 1 + 1 + 3 + 2  # tokens, models, 3 resid, 2 mlp
    assert list(staged.iterdir()) == []
    assert Lake(crashed).read_layer("tiny-gpt2", "resid", 2).shape == (1024, 32)



def test_memory_is_one_batch_no_cache_and_no_output_outlives_its_write(
    tiny_gpt2_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every forward pass runs without a key/value cache and without holding every layer to
    its end (the layers are copied as they are made), and when one starts, no tensor the
    previous pass made is alive any more (only its float16 copies, being written)."""
    import weakref

    import tnb.extract

    calls: list[dict] = []
    previous: list[weakref.ref] = []
    load_model = tnb.extract.load_model

    def before(_module, _args, kwargs) -> None:
        calls.append({"use_cache": kwargs.get("use_cache"), "hidden_states": kwargs.get("output_hidden_states"),
                      "alive": sum(ref() is not None for ref in previous)})
        previous.clear()

    def block_output(_module, _args, output) -> None:
        previous.append(weakref.ref(output[0] if isinstance(output, tuple) else output))

    def after(_module, _args, _kwargs, output) -> None:
        previous.append(weakref.ref(output.last_hidden_state))

    def hooked(*args, **kwargs):
        model = load_model(*args, **kwargs)
        model.register_forward_pre_hook(before, with_kwargs=True)
        for block in model.h:
            block.register_forward_hook(block_output)
        model.register_forward_hook(after, with_kwargs=True)
        return model

    monkeypatch.setattr(tnb.extract, "load_model", hooked)
    result = _extract(Lake(tmp_path), str(tiny_gpt2_dir), sites=("resid",), batch_size=1)
    assert len(calls) == 5  # 4 sequences of 64 and a short one: a batch each
    assert calls == [{"use_cache": False, "hidden_states": False, "alive": 0}] * 5
    assert len(previous) == 3  # the tiny model's 2 blocks and the output were watched
    assert set(result.seconds) == {"load", "forward", "convert", "write", "wait", "publish"}


def _tiny_base_model(kind: str, tie_last: bool | None = None):
    from transformers import AutoModel, BertConfig, GPT2Config, LlamaConfig

    configs = {
        "gpt2": lambda: GPT2Config(n_layer=3, n_embd=16, n_head=2, vocab_size=50, n_positions=32),
        "bert": lambda: BertConfig(num_hidden_layers=3, hidden_size=16, num_attention_heads=2, intermediate_size=24,
                                   vocab_size=50, max_position_embeddings=32),
        "llama": lambda: LlamaConfig(num_hidden_layers=3, hidden_size=16, num_attention_heads=2, num_key_value_heads=1,
                                     intermediate_size=24, vocab_size=50, max_position_embeddings=32),
    }
    config = configs[kind]()
    if tie_last is not None:
        config.tie_last_hidden_states = tie_last
    torch.manual_seed(0)
    return AutoModel.from_config(config).eval()


def _captured_and_expected(model, hooks: bool = True):
    from tnb.extract import _Capture, _forward
    from tnb.models import architecture

    arch = architecture(model.config)
    todo = [("resid", layer, None) for layer in range(arch.n_layers + 1)]
    capture = _Capture(model, arch, todo, torch.float32)
    assert capture.residual_hooks is hooks
    ids = torch.randint(0, 50, (3, 7), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = _forward(model, ids, True, "tiny").hidden_states
        capture.after_forward(_forward(model, ids, not hooks, "tiny"))
        kept = capture.take({})
    capture.close()
    return kept, expected, arch.n_layers


@pytest.mark.parametrize("kind", ["gpt2", "bert", "llama"])
def test_the_hooks_copy_exactly_what_output_hidden_states_returns(kind: str) -> None:
    """Layer i captured from the blocks as the pass goes equals ``hidden_states[i]`` to the bit,
    the last one included (GPT-2's and Llama's have the final norm applied)."""
    kept, expected, n_layers = _captured_and_expected(_tiny_base_model(kind))
    assert len(expected) == n_layers + 1 == len(kept)
    for layer in range(n_layers + 1):
        assert torch.equal(kept[("resid", layer)], expected[layer]), layer
    assert not torch.equal(expected[-1], expected[-2])  # the layers differ: an off-by-one would show


def test_an_untied_last_hidden_state_is_the_last_blocks_output_as_transformers_returns_it() -> None:
    kept, expected, n_layers = _captured_and_expected(_tiny_base_model("gpt2", tie_last=False))
    for layer in range(n_layers + 1):
        assert torch.equal(kept[("resid", layer)], expected[layer]), layer


def test_unknown_blocks_fall_back_to_output_hidden_states(monkeypatch: pytest.MonkeyPatch) -> None:
    import tnb.extract

    monkeypatch.setattr(tnb.extract, "block_list_name", lambda model_type: None)
    kept, expected, n_layers = _captured_and_expected(_tiny_base_model("llama"), hooks=False)
    for layer in range(n_layers + 1):
        assert torch.equal(kept[("resid", layer)], expected[layer]), layer


def test_a_layer_the_hooks_never_saw_is_an_error_not_a_missing_partition() -> None:
    from tnb.extract import _Capture
    from tnb.models import architecture

    model = _tiny_base_model("gpt2")
    capture = _Capture(model, architecture(model.config), [("resid", 1, None), ("resid", 2, None)], torch.float32)
    capture.keep(("resid", 1), torch.zeros(2, 3))
    with pytest.raises(ModelError, match=r"did not reach \[\('resid', 2\)\]"):
        capture.take({})
    capture.close()
    assert not model.h[0]._forward_hooks


def test_the_heap_keeps_the_first_pass_working_set_and_hands_back_only_growth_beyond_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import tnb.extract
    from tnb.extract import _glibc, _Heap

    if _glibc() is None:
        pytest.skip("not glibc: the heap is left as it is")
    calls: list[tuple] = []
    free = [100 * 2**20]  # the heap's free bytes, as mallinfo2 will report them

    class Recording:  # glibc's calls, recorded; mallinfo2 reports ``free``
        def __getattr__(self, name):
            if name == "mallinfo2":
                return lambda: tnb.extract._Mallinfo2(fordblks=free[0])
            return lambda *args: calls.append((name, *args))

    monkeypatch.setattr(tnb.extract, "_glibc", Recording)
    heap = _Heap()
    assert calls == [("mallopt", -3, tnb.extract.MMAP_THRESHOLD), ("mallopt", -1, tnb.extract.TRIM_THRESHOLD)]
    heap.after_load()  # what loading left free goes back before the first pass
    assert calls[-1] == ("malloc_trim", 0)
    heap.between_batches()  # the first pass: its free heap is its working set, kept
    assert heap.limit == 100 * 2**20 + tnb.extract.RETAINED_FREE and heap.trims == 0
    free[0] = heap.limit  # the heap no bigger than allowed: nothing to hand back
    heap.between_batches()
    assert heap.trims == 0 and calls[-1] == ("malloc_trim", 0) and len(calls) == 3
    free[0] = heap.limit + 1  # grown beyond it (fragmentation): the free pages go back
    heap.between_batches()
    assert heap.trims == 1 and calls[-1] == ("malloc_trim", 0) and len(calls) == 4
    heap.close()
    assert calls[-1] == ("mallopt", -1, 2 * tnb.extract.MMAP_THRESHOLD)


def test_glibcs_heap_statistics_are_read() -> None:
    from tnb.extract import _glibc

    if _glibc() is None:
        pytest.skip("not glibc")
    info = _glibc().mallinfo2()
    assert info.arena > 0 and 0 <= info.fordblks <= info.arena + info.hblkhd


def test_a_model_that_fails_to_load_leaves_the_heap_settings_restored(
    tiny_gpt2_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tnb.extract

    closed: list[bool] = []

    class Heap(tnb.extract._Heap):
        def close(self) -> None:
            closed.append(True)
            super().close()

    def broken(*_args, **_kwargs):
        raise ValueError("truncated weights")

    monkeypatch.setattr(tnb.extract, "_Heap", Heap)
    monkeypatch.setattr(tnb.extract, "load_model", broken)
    with pytest.raises(ModelError, match="cannot load the weights of .*truncated weights"):
        _extract(Lake(tmp_path), str(tiny_gpt2_dir), sites=("resid",))
    assert closed == [True]


def test_elsewhere_than_glibc_the_heap_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    import tnb.extract

    monkeypatch.setattr(tnb.extract, "_glibc", lambda: None)
    heap = tnb.extract._Heap()
    monkeypatch.setattr(tnb.extract, "RETAINED_FREE", -(2**62))  # any free byte would be too many
    heap.after_load()
    heap.between_batches()
    heap.between_batches()
    purged: list[bool] = []
    monkeypatch.setattr(tnb.extract, "purge_jemalloc", lambda: purged.append(True) or True)
    heap.close()
    assert heap.trims == 0 and heap.limit is None
    assert purged == [True]  # the pass is over: jemalloc's kept pages go back (a no-op off jemalloc)


def test_beside_a_preloaded_allocator_glibcs_heap_is_left_alone() -> None:
    import ctypes.util

    from tnb.extract import _glibc

    jemalloc = ctypes.util.find_library("jemalloc")
    if _glibc() is None:
        pytest.skip("not glibc's malloc in this process")
    if jemalloc is None:
        pytest.skip("no jemalloc here (Debian: apt-get install libjemalloc2)")
    probe = "import tnb.extract as e; print(e._glibc() is None, e._Heap()._libc is None)"
    for preload, expected in (({"LD_PRELOAD": jemalloc}, "True True"), ({}, "False False")):
        env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"} | preload
        out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.split() == expected.split(), (preload, out.stdout, out.stderr[-500:])


def test_a_failing_write_in_the_writer_thread_publishes_nothing(
    tiny_gpt2_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tnb import lake as lake_module

    lake = Lake(tmp_path)
    _extract(lake, str(tiny_gpt2_dir), sites=(), batch_size=1)  # the token stream and nothing else
    before = lake_snapshot(lake.root)
    write, calls = lake_module.PartitionWriter.write, []

    def failing(self, data) -> None:
        calls.append(self.key)
        if len(calls) == 4:  # the second batch of the first partition, while the forward pass goes on
            raise LakeError("disk gone")
        write(self, data)

    monkeypatch.setattr(lake_module.PartitionWriter, "write", failing)
    with pytest.raises(LakeError, match="disk gone"):
        _extract(lake, str(tiny_gpt2_dir), sites=("resid",), batch_size=1)
    assert lake_snapshot(lake.root) == before
    assert list((lake.root / "_staging").iterdir()) == []


# ------------------------------------------------------------------ bad input


@pytest.fixture()
def populated_lake(tiny_gpt2_dir: Path, tmp_path: Path) -> Lake:
    lake = Lake(tmp_path / "lake")
    _extract(lake, str(tiny_gpt2_dir), sites=("resid",), layers=[0])
    return lake


def _corpus_file(tmp_path: Path, texts: list[str]) -> str:
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return str(path)


@pytest.mark.parametrize(
    ("case", "error", "match"),
    [
        ("empty corpus", CorpusError, "empty"),
        ("fewer tokens than one sequence", CorpusError, r"has 3 tokens, fewer than one sequence of seq_len=64"),
        ("unknown model", ModelError, "unknown model 'no-such-model'"),
        ("layer out of range", ModelError, r"layer 7 is out of range for model 'tiny-gpt2' site 'resid' \(valid: 0..2\)"),
        ("unsupported site", ModelError, "site should be one of"),
    ],
)
def test_bad_input_is_one_clear_error_and_lake_unchanged(
    case: str, error: type, match: str, populated_lake: Lake, tiny_gpt2_dir: Path, tmp_path: Path
) -> None:
    before = lake_snapshot(populated_lake.root)
    with pytest.raises(error, match=match):
        if case == "empty corpus":
            _extract(populated_lake, str(tiny_gpt2_dir), corpus=_corpus_file(tmp_path, ["", "  "]))
        elif case == "fewer tokens than one sequence":
            _extract(populated_lake, str(tiny_gpt2_dir), corpus=_corpus_file(tmp_path, ["Hello world."]))
        elif case == "unknown model":
            _extract(populated_lake, "no-such-model")
        elif case == "layer out of range":
            _extract(populated_lake, str(tiny_gpt2_dir), layers=[7])
        else:
            _extract(populated_lake, str(tiny_gpt2_dir), sites=("attn",))
    assert lake_snapshot(populated_lake.root) == before


def test_foreign_and_corrupt_files_stop_extraction(populated_lake: Lake, tiny_gpt2_dir: Path) -> None:
    key = partition_key("activations", model="tiny-gpt2", site="resid", layer=0)
    foreign = populated_lake.partition_dir(key) / "stray.csv"
    foreign.write_text("a,b\n")
    before = lake_snapshot(populated_lake.root)
    with pytest.raises(LakeError, match="foreign file in lake partition .*stray.csv"):
        _extract(populated_lake, str(tiny_gpt2_dir), sites=("resid",), layers=[0], overwrite=True)
    assert lake_snapshot(populated_lake.root) == before
    foreign.unlink()
    path = populated_lake.path(key)
    path.write_bytes(b"not parquet" + path.read_bytes()[11:])
    with pytest.raises(LakeError, match="corrupt file in lake"):
        populated_lake.verify(key)


def test_hub_model_unreachable_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    with pytest.raises(ModelError, match=r"model 'gpt2-xl' .* is neither in the local Hugging Face cache nor reachable"):
        _extract(Lake(tmp_path / "lake"), "gpt2-xl")


def test_cli_prints_one_line_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = cli.main(["extract", "--lake", str(tmp_path / "lake"), "--model", "no-such-model"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("tnb: error: unknown model 'no-such-model'") and "\n" not in err


def test_host_buffers_round_like_to_and_are_reused() -> None:
    """Each batch's converted copy lands in a reused buffer, with exactly the values of ``.to(float16)``."""
    from tnb.extract import _into_buffer

    slots: dict = {}
    big = torch.randn(4, 8, 16) * 1000  # values float16 must round
    first = _into_buffer(slots, "resid", big.to(torch.float32))
    assert first.dtype == torch.float32 and torch.equal(first, big)
    slots = {}
    first = _into_buffer(slots, ("resid", 1), big.to(torch.float16))
    assert torch.equal(first, big.to(torch.float16)) and first.shape == big.shape
    storage = slots[("resid", 1)].data_ptr()
    small = torch.randn(2, 8, 16).to(torch.float16)  # a last, shorter batch: same buffer
    second = _into_buffer(slots, ("resid", 1), small)
    assert torch.equal(second, small) and slots[("resid", 1)].data_ptr() == storage
    larger = torch.randn(8, 8, 16).to(torch.float16)  # grows when a batch is larger
    assert torch.equal(_into_buffer(slots, ("resid", 1), larger), larger)


def test_load_model_leaves_pytorchs_allocator_settings_alone(tmp_path: Path) -> None:
    """Huge pages (asked for before the hooks: bounded memory at ~10% of the speed) are no
    longer switched on: PyTorch's CPU allocator runs as it does by default, as the bare
    forward pass tnb is measured against does."""
    code = textwrap.dedent(
        f"""
        import os, sys
        from transformers import GPT2Config, GPT2Model
        from tnb.models import load_model, resolve_model
        GPT2Model(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50257)).save_pretrained({str(tmp_path / "m")!r})
        load_model(resolve_model({str(tmp_path / "m")!r}))
        print(os.environ.get("THP_MEM_ALLOC_ENABLE"))
        """
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split()[-1] == "None"
