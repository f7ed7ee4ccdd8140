"""Token stream -> per-layer activations in the lake, streamed in bounded memory.

Sites and layer numbers (one place that maps ``hidden_states`` to layers):

``resid``
    ``hidden_states[layer]`` as ``transformers`` returns it with ``output_hidden_states``:
    layer 0 is the embedding output, layer i (1..n_layers) the output of block i. As in
    the study, for GPT-2 the last one (``layer = n_layers``) has the final layer norm
    ``ln_f`` applied, because that is what GPT2Model returns there.
``mlp``
    Block i's MLP neurons after the activation function (i = 1..n_layers), 4 x hidden
    wide for GPT-2 and BERT, captured by a forward pre-hook on the MLP's down projection.
    For a gated MLP (Llama, SmolLM2) that input is ``act(gate_proj x) * up_proj x``
    (``intermediate_size`` wide, 1,536 for SmolLM2). Hooks are always removed, also on error.

Special tokens: every sequence is wrapped as the model's tokenizer wraps a text
(:func:`tnb.tokens.special_wrapping`: BERT ``[CLS] ... [SEP]``, a BOS for Llama tokenizers
that add one, nothing for GPT-2 unless ``add_bos``), and the ``models`` table records the
wrapping. The content positions are the stream's, identical for every model with one
tokenizer. The special positions' activations are stored too, as rows flagged ``special``
(``pos`` null; ``seq_id``, ``wrapped_pos``, ``token_id`` and ``token`` say which), so a
wrapped model's partitions have more rows than the stream; every reader of a layer
(:meth:`tnb.lake.Lake.read_layer`) leaves them out unless asked, so no matrix holds them.

Peak memory is bounded by the batch, never layers x tokens. Hooks copy each wanted layer,
the moment the forward pass makes it, into one of two sets of host buffers made before the
first pass (``batch_size x seq_len x width`` each, as stored), so a pass allocates what a
bare forward pass allocates and keeps no layer alive to its end (``output_hidden_states``
would hold them all; it is only the fallback for architectures whose blocks tnb does not
know). Meanwhile a writer thread encodes the previous batch's set and appends it to one
staged Parquet file per partition; no reference to a batch outlives its write. Under
glibc's malloc the heap is held as steady through the pass as glibc allows (:class:`_Heap`);
under jemalloc, which ``tnb run`` and ``tnb extract`` start on where it is installed
(:mod:`tnb.allocator`), every batch peaks at the same level. All partitions are published (renamed
into place) when the pass ends. The writing overlaps the next forward pass, so extraction
runs at nearly the speed of the forward pass alone; :attr:`ExtractResult.seconds` says
where the time went.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import inspect
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from tnb.allocator import libc, process_allocator, purge_jemalloc
from tnb.errors import CorpusError, LakeError, ModelError, TnbError
from tnb.lake import Lake, PartitionKey, PartitionWriter, partition_key
from tnb.models import (
    SITES,
    Architecture,
    ModelSpec,
    architecture,
    block_list_name,
    check_layers,
    load_config,
    load_model,
    load_tokenizer,
    mlp_module_name,
    model_record,
)
from tnb.schemas import MODELS, act_array, activations_schema
from tnb.tokens import Wrapping, special_wrapping


@dataclass(frozen=True)
class ExtractResult:
    model: str
    stream: str
    n_layers: int
    written: tuple[str, ...]  # partitions published by this call
    skipped: tuple[str, ...]  # partitions that were already complete
    # where the time went (seconds): load (model and tokenizer), forward, convert (the hooks'
    # copies to the stored dtype, on the host; inside the forward pass, not in "forward"),
    # write (encode + append, in the writer thread, overlapping the next forward), wait (the
    # forward loop blocked on the writer), publish; empty when nothing was written
    seconds: Mapping[str, float] = field(default_factory=dict)


def pick_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when a GPU is present, else ``cpu``."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def ensure_token_stream(
    lake: Lake,
    corpus: str | None,
    tokenizer_name: str,
    tokenizer: Any,
    max_tokens: int,
    seq_len: int,
    text_column: str = "text",
    max_documents: int | None = None,
    overwrite: bool = False,
    hub_config: str | None = None,
) -> str:
    """Write the token stream of (corpus, tokenizer) once; return its stream id.

    Sizes are checked before anything is read (``ValueError`` naming the bad value).
    """
    from tnb.corpus import corpus_name, load_corpus
    from tnb.tokens import build_token_stream, stream_id

    for name, value in (("max_tokens", max_tokens), ("seq_len", seq_len)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CorpusError(f"{name} should be an integer >= 1. Got {value!r} instead.")
    if seq_len > max_tokens:
        raise CorpusError(f"seq_len should be <= max_tokens={max_tokens}. Got {seq_len} instead.")
    stream = stream_id(corpus_name(corpus, hub_config), tokenizer_name, max_tokens, seq_len)
    key = partition_key("tokens", stream=stream)
    config = {
        "corpus": corpus or "bundled:enwiki_sample",
        "hub_config": hub_config,
        "tokenizer": tokenizer_name,
        "max_tokens": max_tokens,
        "seq_len": seq_len,
        "text_column": text_column,
        "max_documents": max_documents,
    }
    with lake.lock(key):  # a concurrent run waits here, then finds the stream written
        if overwrite or not lake.is_complete(key, config):
            documents = load_corpus(corpus, text_column=text_column, max_documents=max_documents, hub_config=hub_config)
            table = build_token_stream(documents, tokenizer, max_tokens=max_tokens, seq_len=seq_len)
            lake.write_table(key, table, config, overwrite=True)
    return stream


def _source(spec: ModelSpec) -> str:
    return str(Path(spec.source) / spec.gguf_file) if spec.gguf_file else spec.source


def model_identity(spec: ModelSpec, stream: str, wrapping: Wrapping, special_tokens: str) -> dict[str, Any]:
    """What makes a model's partitions what they are, beyond its name: their config in the lake.

    The wrapping is named only when there is one, so partitions of unwrapped models (GPT-2)
    made before special tokens were recorded stay valid.
    """
    identity: dict[str, Any] = {"source": _source(spec), "stream": stream}
    if not spec.trained:
        identity.update(trained=False, twin_of=spec.twin_of, init_seed=spec.seed)
    if wrapping.prefix or wrapping.suffix:
        identity["special_tokens"] = special_tokens
    return identity


def recorded_add_bos(config: Mapping[str, Any]) -> bool:
    """Whether the partitions with this config (see :func:`model_identity`) were extracted with ``add_bos``.

    The config records the wrapping's template, not the flag: a template with a prefix
    (``"<|endoftext|> {content}"``) needs ``add_bos`` for a tokenizer that puts none itself
    (GPT-2), and for one that does (BERT, Llama) the flag changes nothing; a template
    without one (``"{content} </s>"``, or none at all) means the flag was off.
    """
    template = config.get("special_tokens")
    return isinstance(template, str) and not template.startswith("{content}")


def max_positions(config: Any) -> int | None:
    """The longest sequence a model's position embeddings cover (None when it has no such limit)."""
    limit = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    if limit is None:
        return None
    offset = 2 if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert") else 0
    return int(limit) - offset


def check_weights(spec: ModelSpec) -> None:
    """Read the header of a local model's safetensors files (cheap): truncated or empty weights fail here."""
    from pathlib import Path

    directory = Path(spec.source)
    if not directory.is_dir():
        return
    from safetensors import safe_open

    for path in sorted(directory.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt") as weights:
                weights.keys()
        except Exception as error:  # noqa: BLE001  (safetensors raises its own error type)
            reason = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
            raise ModelError(f"cannot load the weights of {spec.name} from {path}: {reason}") from None


def preflight(
    lake: Lake,
    spec: ModelSpec,
    corpus: str | None,
    hub_config: str | None,
    max_tokens: int,
    seq_len: int,
    sites: Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
    overwrite: bool = False,
    text_column: str = "text",
    max_documents: int | None = None,
    add_bos: bool = False,
) -> None:
    """Everything an extraction can check before it writes anything, so bad input leaves the lake as it was.

    The model's config, positions, layers and weights' headers; a local corpus (its first
    document); and a ``models`` row that would pin the model to another token stream.
    """
    from pathlib import Path

    from tnb.corpus import corpus_name, load_corpus
    from tnb.tokens import stream_id

    check_seq_len(spec, seq_len)
    arch = architecture(load_config(spec))
    for site in sites or ():
        if site not in SITES:
            raise ModelError(f"site should be one of {SITES}. Got {site!r} instead.")
        if site == "mlp":
            mlp_module_name(arch.model_type, 1)
        check_layers(arch, site, None if layers is None else list(layers), spec.name)
    check_weights(spec)
    if corpus is None or Path(corpus).expanduser().exists() or not hub_config:
        load_corpus(corpus, text_column=text_column, max_documents=max_documents, hub_config=hub_config)
    if sites is not None and not overwrite:
        tokenizer_name, tokenizer = load_tokenizer(spec)
        stream = stream_id(corpus_name(corpus, hub_config), tokenizer_name, max_tokens, seq_len)
        _, special_tokens, identity = _wrapped_identity(spec, stream, tokenizer, add_bos)
        register_model(lake, spec, arch, identity, special_tokens, check_only=True)


def check_seq_len(spec: ModelSpec, seq_len: int) -> None:
    """Fail, naming both numbers, when ``seq_len`` is beyond the model's position embeddings."""
    limit = max_positions(load_config(spec))
    if limit is not None and seq_len > limit:
        raise ModelError(f"--seq-len should be <= {limit}, the positions of {spec.name}. Got {seq_len} instead.")


def _wrapped_identity(spec: ModelSpec, stream: str, tokenizer: Any, add_bos: bool) -> tuple[Wrapping, str, dict[str, Any]]:
    """The model's special-token wrapping, its readable template and its identity in the lake."""
    try:
        wrapping = special_wrapping(tokenizer, add_bos=add_bos)
    except ValueError as error:
        raise ModelError(str(error)) from None
    special_tokens = wrapping.template(tokenizer)
    return wrapping, special_tokens, model_identity(spec, stream, wrapping, special_tokens)


def register_model(
    lake: Lake, spec: ModelSpec, arch: Architecture, identity: dict[str, Any], special_tokens: str,
    overwrite: bool = False, check_only: bool = False,
) -> bool:
    """Record which stream a model's activations are aligned to, and how (the ``models`` table).

    Returns whether the row is (to be) written. ``check_only``: raise if the row would
    conflict, write nothing.
    """
    key = partition_key("models", model=spec.name)
    if not overwrite:
        try:
            if lake.is_complete(key, identity) and lake.read(key).schema.names == MODELS.names:
                return False  # (a row written before the table gained columns is rewritten in the current schema)
        except LakeError:
            # another stream: an error only when activations were made from it (else it is
            # the row of an extraction that failed before publishing anything)
            if any(k.as_dict()["model"] == spec.name for k in lake.partitions("activations")):
                raise
    if check_only:
        return True
    row = {
        "source": _source(spec),
        "architecture": arch.model_type,
        "stream": identity["stream"],
        "n_layers": arch.n_layers,
        "d_resid": arch.d_resid,
        "d_mlp": arch.d_mlp,
        "special_tokens": special_tokens,
        **model_record(spec),
    }
    lake.write_table(key, pa.Table.from_pylist([row], schema=MODELS), identity, overwrite=True)
    return True


class _Capture:
    """Copies each wanted activation, as the forward pass makes it, into this batch's host buffer.

    Hooks see the tensors the moment they exist and copy them (cast to the stored dtype)
    into ``slots``, the reusable buffers of the batch (:func:`_into_buffer`), so the forward
    pass keeps no layer alive after its next block has used it, exactly as a bare forward
    pass does, and allocates nothing more. Residual layers come from hooks on the blocks
    (:func:`tnb.models.block_list_name`): layer 0 is the first block's input, layer i its
    i-th block's output; the last one is the model's ``last_hidden_state`` unless the config
    says ``tie_last_hidden_states=False``, the choice ``output_hidden_states`` makes. Where
    the blocks are unknown, :attr:`residual_hooks` is False and the residual layers are read
    from ``output_hidden_states`` after the pass (:meth:`after_forward`). MLP neurons:
    a forward pre-hook on the down projection. Hooks are removed on :meth:`close`.
    """

    def __init__(self, model: Any, arch: Architecture, todo: Sequence[tuple[str, int, Any]], dtype: Any):
        self.dtype, self.n_layers = dtype, arch.n_layers
        self.wanted = {(site, layer) for site, layer, _ in todo}
        self.slots: dict[Any, Any] = {}
        self.kept: dict[tuple[str, int], Any] = {}
        self.seconds = 0.0
        self._handles: list[Any] = []
        resid = {layer for site, layer in self.wanted if site == "resid"}
        blocks_name = block_list_name(arch.model_type)
        blocks = model.get_submodule(blocks_name) if resid and blocks_name is not None else None
        self.residual_hooks = blocks is not None and len(blocks) == arch.n_layers
        #: the pass must return every layer: residual ones wanted where no hooks can copy them
        self.needs_hidden_states = bool(resid) and not self.residual_hooks
        tie = getattr(model.config, "tie_last_hidden_states", None)
        self._last_from_output = (tie is None or bool(tie)) and arch.n_layers in resid
        try:
            if self.residual_hooks and blocks is not None:
                for index, block in enumerate(blocks):
                    self._handles.append(block.register_forward_hook(self._block_hook(index, resid), with_kwargs=True))
            for site, layer in sorted(self.wanted):
                if site == "mlp":
                    module = model.get_submodule(mlp_module_name(arch.model_type, layer))
                    self._handles.append(module.register_forward_pre_hook(self._input_hook(("mlp", layer))))
        except BaseException:
            self.close()
            raise

    def _block_hook(self, index: int, resid: set[int]) -> Callable[..., None]:
        keep_input = index == 0 and 0 in resid
        output_layer = index + 1
        keep_output = output_layer in resid and not (output_layer == self.n_layers and self._last_from_output)

        def hook(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            if keep_input:
                self.keep(("resid", 0), args[0] if args else kwargs["hidden_states"])
            if keep_output:
                self.keep(("resid", output_layer), output[0] if isinstance(output, tuple) else output)

        return hook

    def _input_hook(self, key: tuple[str, int]) -> Callable[..., None]:
        def hook(_module: Any, args: tuple[Any, ...]) -> None:
            self.keep(key, args[0])

        return hook

    def keep(self, key: tuple[str, int], values: Any) -> None:
        """``values`` copied into this batch's buffer for ``key`` (cast on the device first)."""
        start = time.perf_counter()
        if values.device.type != "cpu":
            values = values.to(dtype=self.dtype)  # less to copy back
        self.kept[key] = _into_buffer(self.slots, key, values, self.dtype)
        self.seconds += time.perf_counter() - start

    def after_forward(self, output: Any) -> None:
        """What only the finished pass gives: the last residual layer, or every residual layer."""
        if self.residual_hooks:
            if self._last_from_output:
                self.keep(("resid", self.n_layers), output.last_hidden_state)
            return
        states = output.hidden_states
        for site, layer in self.wanted:
            if site == "resid":
                if states is None or len(states) != self.n_layers + 1:
                    got = "none" if states is None else len(states)
                    raise ModelError(f"expected {self.n_layers + 1} hidden states from the model, got {got}")
                self.keep((site, layer), states[layer])

    def take(self, slots: dict[Any, Any]) -> dict[tuple[str, int], Any]:
        """This batch's copies (every wanted one, or an error), and ``slots`` for the next."""
        kept, self.kept, self.slots = self.kept, {}, slots
        missing = self.wanted - set(kept)
        if missing:
            raise ModelError(f"the forward pass did not reach {sorted(missing)} (site, layer): the hooks saw no tensor there")
        return kept

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def _sequence_bounds(seq_ids: np.ndarray) -> np.ndarray:
    """Where each sequence of the stream starts, then the stream's end."""
    return np.r_[np.flatnonzero(np.r_[True, seq_ids[1:] != seq_ids[:-1]]), len(seq_ids)] if seq_ids.size else np.zeros(1, int)


def _longest_sequence(seq_ids: np.ndarray) -> int:
    """The most positions one sequence of the stream has (0 for an empty stream)."""
    return int(np.diff(_sequence_bounds(seq_ids)).max(initial=0))


def _batches(token_ids: np.ndarray, seq_ids: np.ndarray, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(positions, token-id matrix) per batch of equal-length sequences, in stream order."""
    bounds = _sequence_bounds(seq_ids)
    starts, lengths = bounds[:-1], np.diff(bounds)
    first = 0
    while first < len(starts):
        last = first + 1
        while last < len(starts) and last - first < batch_size and lengths[last] == lengths[first]:
            last += 1
        begin, end = bounds[first], bounds[last]
        yield np.arange(begin, end, dtype=np.int32), token_ids[begin:end].reshape(last - first, lengths[first])
        first = last


def _row_columns(
    pos: np.ndarray, seq_ids: np.ndarray, wrapping: Wrapping, special_text: Mapping[int, str]
) -> dict[str, pa.Array]:
    """Every column but ``act`` of one batch's rows, in the order of its stored values.

    Without special tokens: ``pos`` only (content rows). With them: one row per wrapped
    position, ``pos`` null and ``special`` true at the special ones (see
    :data:`tnb.schemas.SPECIAL_COLUMNS`).

    Parameters
    ----------
    pos : ndarray of shape (n_sequences * seq_len,)
        The batch's content positions, sequence after sequence.
    seq_ids : ndarray of shape (n_sequences,)
    """
    if not (wrapping.prefix or wrapping.suffix):
        return {"pos": pa.array(pos)}
    n_sequences = len(seq_ids)
    seq_len = pos.size // n_sequences
    special = wrapping.special_mask(seq_len)
    wrapped = np.zeros((n_sequences, special.size), dtype=np.int32)
    wrapped[:, ~special] = pos.reshape(n_sequences, seq_len)
    special_ids = np.zeros(special.size, dtype=np.int32)
    special_ids[special] = [*wrapping.prefix, *wrapping.suffix]
    texts = [special_text[int(token_id)] if is_special else None for token_id, is_special in zip(special_ids, special, strict=True)]
    mask = np.tile(special, n_sequences)
    return {
        "pos": pa.array(wrapped.reshape(-1), mask=mask),
        "special": pa.array(mask),
        "seq_id": pa.array(np.repeat(seq_ids.astype(np.int32), special.size)),
        "wrapped_pos": pa.array(np.tile(np.arange(special.size, dtype=np.int32), n_sequences)),
        "token_id": pa.array(np.tile(special_ids, n_sequences), mask=~mask),
        "token": pa.array(texts * n_sequences, type=pa.string()),
    }


def _activation_table(columns: Mapping[str, pa.Array], values: Any, width: int, schema: pa.Schema) -> pa.Table:
    """``values`` (a host tensor of shape (batch, seq, width), already in the stored dtype) as rows."""
    act = act_array(values.contiguous().numpy().reshape(-1, width))  # each row's values as bytes (tnb.schemas.activations_schema)
    return pa.Table.from_arrays([columns["pos"], act, *(columns[name] for name in schema.names[2:])], schema=schema)


def writer_threads(device: str, n_partitions: int) -> int:
    """Threads that encode and append batches: one beside a CPU forward pass (which uses the
    cores), up to one per partition and core beside a GPU, where encoding is the limit."""
    if device == "cpu":
        return 1
    return max(1, min(n_partitions, (os.cpu_count() or 2) - 1))


class _BatchWriter:
    """Appends each batch to its partitions in a thread pool, one batch in flight.

    :meth:`submit` first waits until the previous batch is written (re-raising a writer's
    error), so at most two batches are alive: the one being written and the one just made.
    Each partition receives its batches in order.
    """

    def __init__(self, pool: ThreadPoolExecutor, seconds: dict[str, float]):
        self._pool, self._seconds = pool, seconds
        self._pending: list[Future[float]] = []

    def submit(self, columns: Mapping[str, pa.Array], batch: Sequence[tuple[PartitionWriter, Any, int]]) -> None:
        self.wait()
        self._pending = [self._pool.submit(_append, out, columns, values, width) for out, values, width in batch]

    def wait(self) -> None:
        start = time.perf_counter()
        pending, self._pending = self._pending, []
        try:
            self._seconds["write"] += sum(future.result() for future in pending)
        finally:
            for future in pending:  # none still running when an error propagates
                future.cancel() or future.exception()
            self._seconds["wait"] += time.perf_counter() - start


def _into_buffer(slots: dict[Any, Any], key: Any, values: Any, dtype: Any = None) -> Any:
    """``values`` copied (and cast to ``dtype``, default its own) into the reusable host buffer
    ``slots[key]``, grown when too small; the cast rounds as ``.to(dtype)`` does."""
    dtype = values.dtype if dtype is None else dtype
    buffer = slots.get(key)
    if buffer is None or buffer.numel() < values.numel() or buffer.dtype != dtype:
        buffer = slots[key] = values.new_empty(values.numel(), dtype=dtype, device="cpu")
    view = buffer[: values.numel()].view(values.shape)
    view.copy_(values)
    return view


def _append(out: PartitionWriter, columns: Mapping[str, pa.Array], values: Any, width: int) -> float:
    start = time.perf_counter()
    out.write(_activation_table(columns, values, width, out.schema))
    return time.perf_counter() - start


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


@functools.lru_cache(maxsize=1)
def _glibc() -> Any:
    """glibc (``mallopt``, ``malloc_trim``, ``mallinfo2``: 2.33 and later) where its malloc is
    the process's, or None: another C library, or another allocator preloaded (jemalloc, as
    ``tnb extract`` starts itself where it can, or tcmalloc through ``LD_PRELOAD``), whose heap
    glibc's calls would not reach."""
    if process_allocator() != "glibc":
        return None
    c = libc()
    try:
        c.mallinfo2.restype = _Mallinfo2
        c.mallopt, c.malloc_trim  # noqa: B018  (all three, or none)
    except AttributeError:
        return None
    return c


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: Blocks up to this size come from the heap during the pass (glibc's largest, 32 MiB on 64 bits).
MMAP_THRESHOLD = 32 * 2**20
#: glibc trims the heap's top on free only above this, so not inside a forward pass.
TRIM_THRESHOLD = 256 * 2**20
#: Free heap memory kept between batches beyond what the first pass left free (its working set).
RETAINED_FREE = 64 * 2**20


class _Heap:
    """glibc's heap, held steady through the pass (elsewhere, or beside another allocator, this does
    nothing but purge jemalloc's free pages when the pass ends).

    By default glibc moves its mmap threshold up to the size of every large block freed, so
    whether the forward pass's multi-MB transients are served from the heap (reused, fast) or
    mapped afresh (every page faulted in again, ~15% slower) changes during a run and from
    run to run, and the heap, once used, fragments and grows. For the pass tnb fixes the
    threshold (:data:`MMAP_THRESHOLD`: every transient reuses heap pages) and stops
    glibc's own trimming on free (inside a forward pass). The pages the model's loading left
    free go back at once (:meth:`after_load`). What the first pass leaves free is the heap its
    transients need, so it is kept; :meth:`between_batches` hands the free pages back only
    once the heap holds :data:`RETAINED_FREE` more than that (fragmentation growing), so
    memory stays bounded by one pass, and a small model whose transients fit is never made
    to fault its working set in again (MiniLM: ~60-90 MiB free after every pass, ~140,000
    page faults per 20,000 tokens saved). ``mallopt`` has no getter: when the pass ends the
    trim threshold is set to glibc's dynamic value for this mmap threshold (2x), which stays
    fixed.
    """

    def __init__(self) -> None:
        self._libc = _glibc()
        self.trims = 0
        #: free heap bytes kept between batches; set after the first pass
        self.limit: int | None = None
        if self._libc is not None:
            self._libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
            self._libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)

    def after_load(self) -> None:
        """The free pages the model's loading left (conversions, reads), handed back before the first pass."""
        if self._libc is not None:
            self._libc.malloc_trim(0)

    def between_batches(self) -> None:
        if self._libc is None:
            return
        free = self._libc.mallinfo2().fordblks
        if self.limit is None:
            self.limit = free + RETAINED_FREE
        elif free > self.limit:
            self._libc.malloc_trim(0)
            self.trims += 1

    def close(self) -> None:
        """The pass is over: glibc's trimming as it would be; jemalloc (which never purges by itself
        under ``tnb extract``'s settings) hands its free pages back."""
        if self._libc is not None:
            self._libc.mallopt(_M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD)
        else:
            purge_jemalloc()


def _forward(model: Any, input_ids: Any, hidden_states: bool, spec_name: str) -> Any:
    """One forward pass (no key/value cache); ``hidden_states``: with every layer's output."""
    import torch

    kwargs: dict[str, Any] = {"attention_mask": torch.ones_like(input_ids), "output_hidden_states": hidden_states}
    if "use_cache" in inspect.signature(model.forward).parameters:
        kwargs["use_cache"] = False
    try:
        return model(input_ids=input_ids, **kwargs)
    except (IndexError, RuntimeError) as error:  # e.g. sequences beyond the position embeddings
        raise ModelError(
            f"the forward pass of {spec_name} failed on sequences of {input_ids.shape[1]} tokens "
            f"({type(error).__name__}: {str(error).splitlines()[0][:160]})"
        ) from None


def extract_activations(
    lake: Lake,
    spec: ModelSpec,
    stream: str,
    sites: Sequence[str] = ("resid",),
    layers: Sequence[int] | None = None,
    batch_size: int = 16,
    dtype: str = "float16",
    overwrite: bool = False,
    device: str = "auto",
    progress: bool = True,
    add_bos: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
) -> ExtractResult:
    """Run the model over the stream and publish one partition per (site, layer).

    Complete partitions made with the same config are skipped (the model is not even
    loaded when nothing is missing); ``overwrite`` redoes them. Sequences are wrapped in
    the tokenizer's special tokens (``add_bos``: also a BOS where it puts none, e.g.
    ``<|endoftext|>`` for GPT-2); their rows are stored flagged ``special`` and left out of
    every matrix by :meth:`tnb.lake.Lake.read_layer`. ``on_progress(done, total)`` is
    called after every batch with the token positions fed so far (a flow shows it in its UI).
    """
    if batch_size < 1:
        raise ModelError(f"batch_size should be >= 1. Got {batch_size} instead.")
    if dtype not in ("float16", "float32"):
        raise ModelError(f"dtype should be 'float16' or 'float32'. Got {dtype!r} instead.")
    for site in sites:
        if site not in SITES:
            raise ModelError(f"site should be one of {SITES}. Got {site!r} instead.")
    model_config = load_config(spec)
    arch = architecture(model_config)
    tokens_manifest = lake.manifest(partition_key("tokens", stream=stream)) or {}
    seq_len, limit = tokens_manifest.get("config", {}).get("seq_len"), max_positions(model_config)
    if seq_len is not None and limit is not None and seq_len > limit:
        raise ModelError(f"--seq-len should be <= {limit}, the positions of {spec.name}. Got {seq_len} instead.")
    wanted: list[tuple[str, int, PartitionKey]] = []
    for site in sites:
        if site == "mlp":
            mlp_module_name(arch.model_type, 1)  # fails early for unsupported architectures
        for layer in check_layers(arch, site, None if layers is None else list(layers), spec.name):
            wanted.append((site, layer, partition_key("activations", model=spec.name, site=site, layer=layer)))
    start = time.perf_counter()
    _, tokenizer = load_tokenizer(spec)
    tokenizer_seconds = time.perf_counter() - start
    wrapping, special_tokens, identity = _wrapped_identity(spec, stream, tokenizer, add_bos)
    config = {**identity, "dtype": dtype}
    if wrapping.prefix or wrapping.suffix:
        # partitions that hold the special rows; those made before them (content rows only)
        # are refused as another config, so that a lake never mixes the two for one model
        config["special_rows"] = True
    inputs = lake.identity(partition_key("tokens", stream=stream))
    # locks held from the check to the publish: a concurrent run waits, then skips what is done
    with lake.locks([k for _, _, k in wanted] + [partition_key("models", model=spec.name)]):
        replace_row = register_model(lake, spec, arch, identity, special_tokens, overwrite=overwrite, check_only=True)
        todo = [(s, layer, k) for s, layer, k in wanted if overwrite or not lake.is_complete(k, config, inputs)]
        skipped = tuple(str(k) for s, layer, k in wanted if (s, layer, k) not in todo)
        seconds: dict[str, float] = {}
        if todo:
            seconds = _run_model(
                lake, spec, arch, stream, todo, config, batch_size, dtype, device, progress, wrapping,
                {token_id: tokenizer.decode([token_id]) for token_id in (*wrapping.prefix, *wrapping.suffix)}, inputs,
                on_progress,
            )
            seconds["load"] += tokenizer_seconds  # the model's tokenizer (its special tokens), loaded with it
        # the models row once its activations exist
        register_model(lake, spec, arch, identity, special_tokens, overwrite=overwrite or replace_row)
    return ExtractResult(spec.name, stream, arch.n_layers, tuple(str(k) for _, _, k in todo), skipped, seconds)


def _run_model(
    lake: Lake,
    spec: ModelSpec,
    arch: Architecture,
    stream: str,
    todo: list[tuple[str, int, PartitionKey]],
    config: dict[str, Any],
    batch_size: int,
    dtype: str,
    device: str,
    progress: bool,
    wrapping: Wrapping,
    special_text: Mapping[int, str],
    inputs: dict[str, str] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, float]:
    import torch
    from tqdm.auto import tqdm

    tokens = lake.read(partition_key("tokens", stream=stream), columns=["token_id", "seq_id"])
    token_ids = tokens.column("token_id").to_numpy()
    seq_ids = tokens.column("seq_id").to_numpy()
    special = bool(wrapping.prefix or wrapping.suffix)
    device = pick_device(device)
    seconds = dict.fromkeys(("load", "forward", "convert", "write", "wait", "publish"), 0.0)
    heap = _Heap()  # before the model's allocations
    start = time.perf_counter()
    try:
        model = load_model(spec, device)
    except TnbError:
        heap.close()
        raise
    except Exception as error:  # noqa: BLE001  (truncated or empty weights: safetensors raises its own type)
        heap.close()
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise ModelError(f"cannot load the weights of {spec.name} from {spec.source}: {reason}") from None
    heap.after_load()
    seconds["load"] = time.perf_counter() - start
    torch_dtype = torch.float16 if dtype == "float16" else torch.float32
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    with contextlib.ExitStack() as stack:
        writers = {
            (site, layer): stack.enter_context(
                lake.writer(key, activations_schema(arch.width(site), dtype, special), config, inputs)
            )
            for site, layer, key in todo
        }
        # entered after the writers, so left first: no write is running when they publish or abort
        pool = stack.enter_context(
            ThreadPoolExecutor(writer_threads(device, len(todo)), thread_name_prefix="tnb-write")
        )
        batch_writer = _BatchWriter(pool, seconds)
        capture = _Capture(model, arch, todo, torch_dtype)
        stack.callback(capture.close)
        stack.callback(heap.close)
        bar = stack.enter_context(
            tqdm(total=len(token_ids), unit="tok", desc=f"extract {spec.name}", disable=not progress)
        )
        # Two sets of host buffers, made before the first pass and reused batch after batch: the
        # writer encodes one while the forward pass fills the other (the previous write is
        # waited for first), so no copy is a new allocation among the forward pass's transients.
        rows = batch_size * (_longest_sequence(seq_ids) + len(wrapping.prefix) + len(wrapping.suffix))
        host_buffers = tuple(
            {(site, layer): torch.empty(rows * arch.width(site), dtype=torch_dtype) for site, layer, _ in todo}
            for _ in range(2)
        )
        capture.slots = host_buffers[0]
        n_batches = 0
        with torch.inference_mode():
            done = 0  # positions fed so far
            for pos, ids in _batches(token_ids, seq_ids, batch_size):
                columns = _row_columns(pos, seq_ids[pos[:: ids.shape[1]]], wrapping, special_text)
                input_ids = torch.from_numpy(wrapping.apply(ids.astype(np.int64))).to(device)
                begin, copied = time.perf_counter(), capture.seconds
                output = _forward(model, input_ids, capture.needs_hidden_states, spec.name)
                capture.after_forward(output)
                output = None  # nothing of the pass is kept but the copies
                sync()
                n_batches += 1
                kept = capture.take(host_buffers[n_batches % 2])
                # every position fed is stored (special ones flagged)
                batch = [(out, kept[key], arch.width(key[0])) for key, out in writers.items()]
                seconds["convert"] += capture.seconds - copied
                seconds["forward"] += time.perf_counter() - begin - (capture.seconds - copied)
                batch_writer.submit(columns, batch)
                del batch, kept
                heap.between_batches()
                bar.update(len(pos))
                done += len(pos)
                if on_progress is not None:
                    on_progress(done, len(token_ids))
        batch_writer.wait()
        start = time.perf_counter()
    seconds["publish"] = time.perf_counter() - start
    return seconds
