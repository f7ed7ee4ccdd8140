"""Every lake table's partition keys and column schema, in one place.

Partition key columns are *not* stored in the Parquet files; readers get them
from the hive path (``model=gpt2/site=resid/layer=3``), as ``pl.scan_parquet(...,
hive_partitioning=True)`` and ``pyarrow.dataset(..., partitioning="hive")`` do.
"""

from __future__ import annotations

import pyarrow as pa

from tnb.keys import ACT_DTYPE_KEY, ACT_WIDTH_KEY, INT_KEYS, PARTITION_KEYS  # noqa: F401  (re-exported: they belong with the schemas)

TOKENS = pa.schema(
    [
        ("pos", pa.int32()),  # global position in the stream, 0..n_tokens-1
        ("doc_id", pa.int32()),  # ordinal of the source document in corpus order
        ("seq_id", pa.int32()),  # which sequence of seq_len tokens
        ("seq_pos", pa.int32()),  # position inside that sequence
        ("token_id", pa.int32()),
        ("token", pa.string()),  # readable text: " the", not "Ġthe"
    ]
)

MODELS = pa.schema(
    [
        ("source", pa.string()),  # hub id or local directory it was loaded from
        ("architecture", pa.string()),  # e.g. GPT2Model, BertModel
        ("stream", pa.string()),  # the token stream its activations are aligned to
        ("n_layers", pa.int32()),  # transformer blocks; resid layers are 0..n_layers
        ("d_resid", pa.int32()),
        ("d_mlp", pa.int32()),
        # how each sequence was wrapped for the model, e.g. "[CLS] {content} [SEP]"; the special
        # positions' activations are stored as rows flagged ``special`` (see activations_schema)
        ("special_tokens", pa.string()),
        ("quantization", pa.string()),  # GGUF quantisation (e.g. "Q4_1"); null for float checkpoints
        ("dequantized", pa.bool_()),  # weights were dequantised to float32 on load
        ("trained", pa.bool_()),  # False for an untrained (random-initialised) twin
        ("twin_of", pa.string()),  # the trained model a twin copies the config of; null otherwise
        ("init_seed", pa.int64()),  # torch seed of a twin's initialisation; null otherwise
    ]
)

LABELS = pa.schema(
    [
        ("row_k", pa.int32()),
        ("col_k", pa.int32()),
        ("axis", pa.string()),  # "token" (index = pos) or "neuron" (index = neuron)
        ("index", pa.int32()),
        ("label", pa.int32()),
    ]
)

METRICS = pa.schema(
    [
        ("row_k", pa.int32()),
        ("col_k", pa.int32()),
        ("n_tokens", pa.int32()),
        ("n_neurons", pa.int32()),
        ("input", pa.string()),  # matrix clustered: "abs" (the study's |z|) or "signed" (z)
        # Block-mean R^2 (the study's) and its exact two-way split: r2 = r2_rows + r2_cols + r2_interaction
        ("r2", pa.float64()),
        ("r2_rows", pa.float64()),  # token-cluster main effect ("loudness" of token clusters)
        ("r2_cols", pa.float64()),  # neuron-cluster main effect
        ("r2_interaction", pa.float64()),  # token x neuron structure: what the null tests
        ("adjusted_r2", pa.float64()),
        ("statistic", pa.string()),  # what z and p test, e.g. "r2_interaction"
        ("observed", pa.float64()),  # that statistic on the fitted labels
        # The calibrated null: the whole grid refitted on n_null matrices without token x neuron association
        ("z", pa.float64()),  # (observed - null_mean) / null_sd
        ("p", pa.float64()),  # (1 + #{null >= observed}) / (1 + n_null)
        ("p_layer", pa.float64()),  # p corrected for choosing among the grid's points (max-T over the grid)
        ("null", pa.string()),  # name of the null, e.g. "interaction_refit"
        ("n_null", pa.int32()),  # null draws (refits)
        ("null_mean", pa.float64()),
        ("null_sd", pa.float64()),
        ("null_q95", pa.float64()),
        ("null_draws", pa.list_(pa.float64())),  # the statistic of every null draw
        ("excess", pa.float64()),  # observed - null_mean: what selection ranks
        ("z_shuffle", pa.float64()),  # fitted vs shuffled labels (label-shuffle Z): NOT a significance test
        ("n_shuffles", pa.int32()),  # label shuffles behind z_shuffle (0: not computed)
        # Stability: mean pairwise adjusted Rand index of labels refitted with n_seeds seeds
        ("stability", pa.float64()),  # token labels
        ("stability_neurons", pa.float64()),  # neuron labels
        ("n_seeds", pa.int32()),
        ("significant", pa.bool_()),  # p_layer <= alpha
        ("stable", pa.bool_()),  # stability >= the stability threshold
        ("selected", pa.bool_()),  # the grid point the selection rule picked for this layer
        ("finding", pa.bool_()),  # selected and significant and stable
        ("selection_rule", pa.string()),
        # Neuron specialization
        ("spec_mean", pa.float64()),  # the study's 1 - H/log T (blind to which tokens; kept for parity)
        ("spec_median", pa.float64()),
        ("spec_mean_noise", pa.float64()),  # spec_mean of Gaussian noise of the same shape, same preparation
        ("spec_mi", pa.float64()),  # mean over neurons of MI(activation mass; token cluster) minus its shuffle expectation
        ("seconds", pa.float64()),
        ("seed", pa.int64()),
        ("code_version", pa.string()),
    ]
)

FIXED_SCHEMAS: dict[str, pa.Schema] = {
    "tokens": TOKENS,
    "models": MODELS,
    "labels": LABELS,
    "metrics": METRICS,
}


#: Columns an activations partition of a model with special tokens adds after ``pos`` and ``act``.
SPECIAL_COLUMNS = pa.schema(
    [
        ("special", pa.bool_()),  # the row is a special token the model was fed ([CLS], [SEP], BOS), not content
        ("seq_id", pa.int32()),  # the sequence the row belongs to (as in the tokens table)
        ("wrapped_pos", pa.int32()),  # position in the wrapped sequence the model saw (content: seq_pos + prefix)
        ("token_id", pa.int32()),  # the special token's id; null on content rows (join tokens on pos)
        ("token", pa.string()),  # its readable text, e.g. "[CLS]"; null on content rows
    ]
)


#: Field metadata of the ``act`` column: the value type and the values per row of its bytes.
ACT_DTYPE = b"tnb.dtype"
ACT_WIDTH = b"tnb.width"
_VALUE_TYPES = {"float16": pa.float16(), "float32": pa.float32()}
_ITEMSIZE = {"float16": 2, "float32": 4}


def activations_schema(width: int, dtype: str = "float16", special: bool = False, *, legacy: bool = False) -> pa.Schema:
    """Schema of one activations partition: ``pos`` and ``act``, one row's activations.

    ``act`` is a fixed-size binary column: each value holds one row's ``width`` activations
    as little-endian ``dtype`` numbers, and the field's metadata says so (``tnb.dtype``,
    ``tnb.width``; read it with :func:`act_layout`). Parquet encodes such a column as plain
    bytes; a fixed-size list of floats (what lakes before this layout hold, ``legacy=True``)
    costs ~4x the CPU to write, for its per-value nesting levels, at the same size on disk.
    In Polars: ``pl.col("act").bin.reinterpret(dtype=pl.Array(pl.Float16, width))``.

    Parameters
    ----------
    width : int
        Number of neurons (d_model for ``resid``, 4 x d_model for ``mlp``).
    dtype : {"float16", "float32"}
    special : bool
        The model was fed special tokens: the partition also holds their rows (``pos`` is
        null there) and the :data:`SPECIAL_COLUMNS` that mark them. A model fed none (GPT-2
        as the study ran it) has content rows only and no such columns.
    legacy : bool
        ``act`` as a fixed-size list of ``dtype`` (the layout of older lakes, still read).
    """
    value_type = _VALUE_TYPES.get(dtype)
    if value_type is None:
        raise ValueError(f"dtype should be 'float16' or 'float32'. Got {dtype!r} instead.")
    if width < 1:
        raise ValueError(f"width should be >= 1. Got {width} instead.")
    if legacy:
        act = pa.field("act", pa.list_(value_type, width))
    else:
        metadata = {ACT_DTYPE: dtype.encode(), ACT_WIDTH: str(width).encode()}
        act = pa.field("act", pa.binary(width * _ITEMSIZE[dtype]), metadata=metadata)
    fields = [pa.field("pos", pa.int32()), act] + (list(SPECIAL_COLUMNS) if special else [])
    if legacy:
        return pa.schema(fields)
    # The file's key-value metadata repeats the layout: Polars reads it without pyarrow.
    return pa.schema(fields, metadata={ACT_DTYPE_KEY: dtype, ACT_WIDTH_KEY: str(width)})


def act_layout(field: pa.Field) -> tuple[int, str] | None:
    """``(width, dtype)`` of an ``act`` field in either layout; None for anything else."""
    dtype_type = field.type
    if isinstance(dtype_type, pa.FixedSizeListType):
        names = {value: name for name, value in _VALUE_TYPES.items()}
        dtype = names.get(dtype_type.value_type)
        return None if dtype is None else (dtype_type.list_size, dtype)
    if isinstance(dtype_type, pa.FixedSizeBinaryType) and field.metadata:
        dtype = field.metadata.get(ACT_DTYPE, b"").decode()
        width = field.metadata.get(ACT_WIDTH, b"")
        if dtype in _ITEMSIZE and width.isdigit() and int(width) * _ITEMSIZE[dtype] == dtype_type.byte_width:
            return int(width), dtype
    return None


def act_array(values) -> pa.FixedSizeBinaryArray:
    """Rows of activations (an ndarray of shape (rows, width), float16 or float32) as an ``act`` column.

    The array's type matches :func:`activations_schema` for that width and dtype; the bytes
    are the array's own (no copy when it is C-contiguous and little-endian).
    """
    import numpy as np

    values = np.asarray(values)
    if values.ndim != 2 or values.dtype.name not in _ITEMSIZE:
        raise ValueError(f"values should be a 2-D float16 or float32 array. Got {values.dtype} of shape {values.shape} instead.")
    values = np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<"))
    act_type = pa.binary(values.shape[1] * values.dtype.itemsize)
    return pa.FixedSizeBinaryArray.from_buffers(act_type, values.shape[0], [None, pa.py_buffer(values.reshape(-1).view(np.uint8))])


def expected_schema(table: str, actual: pa.Schema) -> pa.Schema:
    """The schema ``actual`` must equal to be written to ``table``."""
    if table == "activations":
        layout = act_layout(actual.field("act")) if "act" in actual.names else None
        if layout is None:
            return activations_schema(1)  # shape of what is expected, for the error message
        legacy = isinstance(actual.field("act").type, pa.FixedSizeListType)
        return activations_schema(*layout, special="special" in actual.names, legacy=legacy)
    return FIXED_SCHEMAS[table]
