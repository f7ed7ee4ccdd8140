"""tnb: token-neuron biclustering of transformer activations.

The library is pure and typed; orchestration lives in ``flows/``.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
