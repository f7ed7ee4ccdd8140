"""The parameters a query may read from the ``params`` table (no imports: ``tnb --help`` lists them)."""

from __future__ import annotations

from typing import Any

#: Every parameter a query may read from ``params``, its type and its default.
PARAMS: dict[str, tuple[type, Any]] = {
    "model": (str, None),
    "site": (str, None),
    "layer": (int, None),
    "method": (str, None),
    "drop_first": (int, 0),  # the study kept every position; 0 is the default everywhere
    "row_k": (int, None),  # with col_k: this grid point instead of the selected one
    "col_k": (int, None),
    "top_n": (int, 10),  # rows per group in top_tokens / top_neurons
    "min_count": (int, 5),  # a token must occur this often in a cluster to be ranked by lift
    "shrink": (float, 5.0),  # pseudo-occurrences at lift 1 added to every token's count in top_tokens
    "artifact_share": (float, 0.9),  # a cluster with more than this share at one seq_pos is a position artifact
}
