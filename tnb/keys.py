"""Every lake table's partition keys: what reading the lake needs, without pyarrow.

(:mod:`tnb.schemas` holds the column schemas and re-exports these.)
"""

from __future__ import annotations

#: Partition keys of each table, outermost first.
PARTITION_KEYS: dict[str, tuple[str, ...]] = {
    "tokens": ("stream",),
    "models": ("model",),
    "activations": ("model", "site", "layer"),
    # drop_first: how many leading positions of each sequence were left out of the matrix
    "labels": ("model", "site", "layer", "method", "drop_first"),
    "metrics": ("model", "site", "layer", "method", "drop_first"),
}

#: Integer-valued partition keys (everything else is a string).
INT_KEYS = frozenset({"layer", "drop_first"})

#: Keys of an activations file's metadata that say how its ``act`` bytes read as floats (the
#: same as the ``act`` field's metadata, ``tnb.schemas.activations_schema``): the file-level
#: copy is what Polars sees (``pl.read_parquet_metadata``), without pyarrow.
ACT_DTYPE_KEY = "tnb.act_dtype"
ACT_WIDTH_KEY = "tnb.act_width"
