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
