"""Resolve ``--base`` / ``--donor`` / ``--tokenizer`` into local checkpoints and fast tokenizers.

This module owns telling what a spec is (a Hugging Face directory, single or sharded safetensors;
a ``.gguf`` file; a hub id), refusing pickled weights unless ``--allow-pickle`` is given, turning
pickled checkpoints into cached safetensors directories, checking that a config is a causal LM,
and loading *fast* tokenizers. Converting a ``.gguf`` (its header, the cached conversion, the
fixes to its tokenizer) is ``gguf_convert.py``'s job; which tensors are the embeddings, and
reading or writing them, is ``checkpoint.py``'s.

Every source ends up as a directory with ``config.json`` and safetensors, so the rest of the
tool never sees GGUF or pickle files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import transformers
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from .checkpoint import list_weight_files
from .errors import SourceError
from .gguf_convert import convert_gguf, gguf_identity, load_gguf_tokenizer, rename_into_cache

logger = logging.getLogger(__name__)

SourceKind = Literal["hf_dir", "gguf", "hub"]

# Pickled files that hold training state, not model weights.
_NOT_WEIGHTS = {"training_args.bin", "optimizer.pt", "scheduler.pt", "scaler.pt"}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# Files a model needs from the hub; never pickles unless --allow-pickle, never other formats.
_HUB_PATTERNS = [
    "*.safetensors",
    "*.json",
    "*.jinja",
    "*.model",
    "*.tiktoken",
    "*.txt",
    "*.md",
    "LICENSE*",
]


@dataclass(frozen=True)
class ModelSource:
    """A model spec resolved to a local directory with ``config.json`` and safetensors.

    Attributes:
        spec: the value the user gave (path or hub id).
        kind: ``hf_dir`` (local directory), ``gguf`` (converted ``.gguf``) or ``hub`` (download).
        local_dir: directory to read from; for ``gguf`` and pickled inputs, a converted copy in
            the cache.
        config: the ``transformers`` ``PretrainedConfig`` of the model.
        identity: what identifies the input for the fingerprint (file names, sizes, mtimes; the
            GGUF's hash key).
    """

    spec: str
    kind: SourceKind
    local_dir: Path
    config: Any
    identity: dict[str, Any]


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/omp_init``, else ``~/.cache/omp_init``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "omp_init"


def resolve_model(
    spec: str,
    *,
    role: str,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    cache_dir: str | Path | None = None,
) -> ModelSource:
    """Resolve a model spec to a local safetensors checkpoint and check it is a causal LM.

    Args:
        spec: an HF model directory, a ``.gguf`` file (or a directory holding exactly one), or a
            hub id ``org/name``.
        role: the flag name without dashes (``base``, ``donor``), used in error messages.
        allow_pickle: convert pickled ``.bin``/``.pt`` weights (loaded with ``weights_only=True``).
        trust_remote_code: let transformers run model code shipped with the checkpoint.
        cache_dir: root of the conversion cache; default :func:`default_cache_dir`.

    Returns:
        A :class:`ModelSource`.

    Raises:
        SourceError: missing path, no config/weights, pickled weights without ``--allow-pickle``,
            not a causal LM, remote code not allowed, hub unreachable.
        MissingDependencyError: ``gguf`` is needed and not installed.
    """
    flag = f"--{role}"
    cache_root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise SourceError(
                f"{flag} {spec!r} is a file but not a .gguf; pass a model directory "
                "(config.json + *.safetensors) or a .gguf file."
            )
        return _resolve_gguf(spec, path, flag, cache_root, trust_remote_code)
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if not (path / "config.json").is_file() and len(ggufs) == 1:
            return _resolve_gguf(spec, ggufs[0], flag, cache_root, trust_remote_code)
        if not (path / "config.json").is_file() and len(ggufs) > 1:
            names = ", ".join(p.name for p in ggufs[:10])
            raise SourceError(
                f"{flag} {spec!r} holds {len(ggufs)} .gguf files ({names}); pass the one you mean."
            )
        return _resolve_hf_dir(
            spec, "hf_dir", path, flag, allow_pickle, trust_remote_code, cache_root
        )
    if _looks_like_hub_id(spec):
        local_dir = _download(spec, flag, allow_pickle, trust_remote_code)
        return _resolve_hf_dir(
            spec, "hub", local_dir, flag, allow_pickle, trust_remote_code, cache_root
        )
    raise SourceError(
        f"{flag} {spec!r} does not exist; pass an existing model directory, a .gguf file or a hub id (org/name)."
    )


def load_tokenizer(
    spec_or_dir: str | Path,
    *,
    role: str,
    trust_remote_code: bool = False,
    cache_dir: str | Path | None = None,
) -> PreTrainedTokenizerFast:
    """Load a fast tokenizer from an HF directory, a ``tokenizer.json`` file or a ``.gguf``.

    Args:
        spec_or_dir: directory, ``tokenizer.json`` path or ``.gguf`` path.
        role: flag name without dashes (``tokenizer``, ``base``, ``donor``) for error messages.
        trust_remote_code: allow tokenizer code shipped with the checkpoint.
        cache_dir: root of the conversion cache (a converted ``.gguf`` there is reused).

    Raises:
        SourceError: missing path, no tokenizer files, or only a slow (Python) tokenizer.
    """
    flag = f"--{role}"
    path = Path(spec_or_dir).expanduser()
    if (
        path.is_dir()
        and not (path / "tokenizer.json").is_file()
        and not (path / "tokenizer_config.json").is_file()
    ):
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            path = ggufs[0]
        else:
            raise SourceError(
                f"{flag} {str(spec_or_dir)!r} has no tokenizer (no tokenizer.json or tokenizer_config.json); "
                "pass a directory or tokenizer.json file that has one."
            )
    if not path.exists():
        raise SourceError(
            f"{flag} {str(spec_or_dir)!r} does not exist; pass a tokenizer directory, tokenizer.json or .gguf file."
        )
    if path.is_file() and path.suffix.lower() == ".gguf":
        cache_root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        return load_gguf_tokenizer(path, cache_root, flag)
    is_bare_file = path.is_file() and (
        path.name != "tokenizer.json" or not (path.parent / "tokenizer_config.json").is_file()
    )
    if is_bare_file:
        # The vocabulary and the pipeline, but no special-token roles (no tokenizer_config.json).
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(path))
    else:
        directory = path if path.is_dir() else path.parent
        try:
            tokenizer = AutoTokenizer.from_pretrained(
                directory, trust_remote_code=trust_remote_code
            )
        except ValueError as exc:
            if "trust_remote_code" in str(exc):
                raise SourceError(
                    f"{flag} {str(spec_or_dir)!r} needs its own tokenizer code to load; "
                    "pass --trust-remote-code if you trust it."
                ) from None
            raise
    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        raise SourceError(
            f"{flag} {str(spec_or_dir)!r} loads only as a slow tokenizer ({type(tokenizer).__name__}); "
            "omp-init needs a fast one: pass a directory with a tokenizer.json "
            "(transformers' convert_slow_tokenizer can write one)."
        )
    return tokenizer


# --- HF directories, pickles, the hub -------------------------------------------------------


def _resolve_hf_dir(
    spec: str,
    kind: SourceKind,
    local_dir: Path,
    flag: str,
    allow_pickle: bool,
    trust_remote_code: bool,
    cache_root: Path,
) -> ModelSource:
    original_dir = local_dir  # identity is taken here, before any pickle conversion
    if not (local_dir / "config.json").is_file():
        raise SourceError(
            f"{flag} {spec!r} has no config.json; pass a Hugging Face model directory "
            "(config.json + *.safetensors) or a .gguf file."
        )
    config = load_causal_lm_config(
        local_dir, spec=spec, role=flag[2:], trust_remote_code=trust_remote_code
    )
    weight_files = list_weight_files(local_dir)
    if not weight_files:
        pickles = _pickled_weight_files(local_dir)
        if not pickles:
            raise SourceError(
                f"{flag} {spec!r} has no model.safetensors or model.safetensors.index.json; "
                "pass a directory that holds the model's weights."
            )
        if not allow_pickle:
            names = ", ".join(p.name for p in pickles[:10])
            raise SourceError(
                f"{flag} {spec!r} has only pickled weights ({names}), which can run code when loaded; "
                "pass --allow-pickle to convert them to safetensors, or convert them yourself."
            )
        local_dir = _convert_pickled(local_dir, pickles, cache_root / "pickle", flag, spec)
    identity = _directory_identity(original_dir, kind)
    return ModelSource(spec=spec, kind=kind, local_dir=local_dir, config=config, identity=identity)


def load_causal_lm_config(
    model_dir: Path, *, spec: str, role: str, trust_remote_code: bool = False
) -> Any:
    """Load ``config.json`` and check that ``AutoModelForCausalLM`` can build the model.

    The model is built on the meta device, so no memory is used and nothing is initialized.

    Raises:
        SourceError: remote code is needed but not allowed, or the model is not a causal LM.
    """
    flag = f"--{role}"
    try:
        config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise SourceError(
                f"{flag} {spec!r} needs its own model code to load; pass --trust-remote-code if you trust it."
            ) from None
        raise SourceError(
            f"{flag} {spec!r}: transformers {transformers.__version__} cannot read its config.json "
            f"({str(exc).splitlines()[0]}); upgrade transformers or check the file."
        ) from None
    model_type = getattr(config, "model_type", None) or "unknown"
    not_causal = SourceError(
        f"{flag} {spec!r} is a {model_type} model, not a causal LM; "
        "omp-init needs a model AutoModelForCausalLM can load."
    )
    if getattr(config, "is_encoder_decoder", False) or not _declares_causal_lm(config):
        raise not_causal
    try:
        with torch.device("meta"):
            AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise SourceError(
                f"{flag} {spec!r} needs its own model code to load; pass --trust-remote-code if you trust it."
            ) from None
        raise not_causal from None
    return config


def _declares_causal_lm(config: Any) -> bool:
    """False for configs that say they are something else (e.g. ``BertForMaskedLM``).

    BERT-like configs are in ``AutoModelForCausalLM``'s mapping (``BertLMHeadModel``), but are
    causal only with ``is_decoder=True``; in transformers 5 only those configs have that field.
    """
    from transformers import PretrainedConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if "AutoModelForCausalLM" in (getattr(config, "auto_map", None) or {}):
        return True
    if (
        not hasattr(PretrainedConfig(), "is_decoder")
        and getattr(config, "is_decoder", True) is False
    ):
        return False
    causal_classes = {
        c
        for v in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()
        for c in ([v] if isinstance(v, str) else v)
    }
    architectures = getattr(config, "architectures", None) or []
    return not architectures or any(
        a in causal_classes or a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures
    )


def _pickled_weight_files(model_dir: Path) -> list[Path]:
    """Pickled weight files, in shard order; training-state files are not weights."""
    index = model_dir / "pytorch_model.bin.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [model_dir / n for n in names]
    found = [p for ext in ("*.bin", "*.pt", "*.pth") for p in model_dir.glob(ext)]
    return sorted(
        p for p in found if p.name not in _NOT_WEIGHTS and not p.name.startswith("rng_state")
    )


def _convert_pickled(
    model_dir: Path, pickles: list[Path], cache_root: Path, flag: str, spec: str
) -> Path:
    """Write a safetensors copy of a pickled checkpoint into the cache (once) and return it."""
    key = hashlib.sha256(
        json.dumps(_file_identity(model_dir, [p.name for p in pickles]), sort_keys=True).encode()
    )
    out = cache_root / f"{model_dir.resolve().name}-{key.hexdigest()[:12]}"
    if (out / "config.json").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        skip = {p.name for p in pickles} | {"pytorch_model.bin.index.json"}
        for item in model_dir.iterdir():
            if (
                item.is_file()
                and item.name not in skip
                and item.suffix not in (".bin", ".pt", ".pth")
            ):
                shutil.copy2(item, tmp / item.name)
        weight_map: dict[str, str] = {}
        total_size = 0
        for i, pickle_path in enumerate(pickles):
            name = (
                "model.safetensors"
                if len(pickles) == 1
                else f"model-{i + 1:05d}-of-{len(pickles):05d}.safetensors"
            )
            state = _load_pickled_state(pickle_path, flag, spec)
            save_file(state, tmp / name, metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(state, name))
            total_size += sum(t.numel() * t.element_size() for t in state.values())
            del state
        if len(pickles) > 1:
            index = {
                "metadata": {"total_size": total_size},
                "weight_map": dict(sorted(weight_map.items())),
            }
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        rename_into_cache(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("converted pickled weights of %s to safetensors in %s", spec, out)
    return out


def _load_pickled_state(path: Path, flag: str, spec: str) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refusals come as UnpicklingError, RuntimeError, ...
        raise SourceError(
            f"{flag} {spec!r}: {path.name} cannot be loaded safely (weights_only=True refused it: "
            f"{str(exc).splitlines()[0]}); convert it to safetensors yourself."
        ) from None
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise SourceError(
            f"{flag} {spec!r}: {path.name} is not a flat state dict of tensors; convert it to safetensors yourself."
        )
    # safetensors refuses tensors sharing memory (tied weights, views): give each its own copy.
    seen: set[int] = set()
    out = {}
    for name, tensor in state.items():
        ptr = tensor.untyped_storage().data_ptr()
        out[name] = (
            tensor.clone().contiguous() if ptr in seen or not tensor.is_contiguous() else tensor
        )
        seen.add(ptr)
    return out


def _looks_like_hub_id(spec: str) -> bool:
    """``"org/name"`` -> True; ``"./x"``, ``"a/b/c"``, ``"x.gguf"`` -> False."""
    return bool(_HUB_ID.fullmatch(spec)) and ".." not in spec and not spec.lower().endswith(".gguf")


def _hub_is_offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
        return True
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _download(spec: str, flag: str, allow_pickle: bool, trust_remote_code: bool) -> Path:
    """Download the files a model needs (never pickles unless allowed) and return the snapshot."""
    if _hub_is_offline():
        raise SourceError(
            f"{flag} {spec!r} is not a local path and the Hugging Face hub is not reachable "
            "(HF_HUB_OFFLINE=1); download it first or pass a local directory or .gguf file."
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    patterns = (
        _HUB_PATTERNS
        + (["pytorch_model*.bin"] if allow_pickle else [])
        + (["*.py"] if trust_remote_code else [])
    )
    try:
        return Path(snapshot_download(spec, allow_patterns=patterns))
    except GatedRepoError:
        raise SourceError(
            f"{flag} {spec!r} is gated on the hub; accept its license on huggingface.co and log in with `hf auth login`."
        ) from None
    except RepositoryNotFoundError:
        raise SourceError(
            f"{flag} {spec!r} is neither a local path nor a model on the Hugging Face hub; check the spelling."
        ) from None
    except (LocalEntryNotFoundError, OSError) as exc:
        raise SourceError(
            f"{flag} {spec!r} is not a local path and the Hugging Face hub is not reachable ({exc.__class__.__name__}); "
            "download it first or pass a local directory or .gguf file."
        ) from None


def _file_identity(model_dir: Path, names: list[str]) -> dict[str, dict[str, int]]:
    """``{name: {"size": bytes, "mtime_ns": ...}}`` for the fingerprint."""
    out = {}
    for name in names:
        stat = (model_dir / name).stat()
        out[name] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return out


def _directory_identity(model_dir: Path, kind: str) -> dict[str, Any]:
    """Sizes and mtimes of every file of a model directory: weights, config and tokenizer."""
    names = sorted(p.name for p in model_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    identity: dict[str, Any] = {"kind": kind, "files": _file_identity(model_dir, names)}
    if kind == "hub":
        identity["revision"] = model_dir.name  # snapshot directories are named by commit
    return identity


def _gguf_source_identity(gguf_path: Path) -> dict[str, Any]:
    return {"kind": "gguf", "gguf": gguf_identity(gguf_path)}


def source_identity(spec: str) -> dict[str, Any] | None:
    """The identity :func:`resolve_model` gives ``spec``, computed without converting or loading.

    Used to decide whether an existing checkpoint was made from the same inputs (axolotl
    reuse). ``None`` for a hub id: its identity is known only after the download.
    """
    path = Path(spec).expanduser()
    if path.is_file():
        return _gguf_source_identity(path)
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if not (path / "config.json").is_file() and len(ggufs) == 1:
            return _gguf_source_identity(ggufs[0])
        return _directory_identity(path, "hf_dir")
    return None


def path_identity(spec: str | Path) -> dict[str, Any]:
    """Identity of a ``--tokenizer`` path for the fingerprint (sizes and mtimes, nothing read).

    Example: ``path_identity("tok/")`` -> ``{"path": "tok/", "files": {"tokenizer.json":
    {"size": 2107, "mtime_ns": ...}, ...}}``; a ``.gguf`` gives ``{"path": ..., "gguf": {...,
    "hash_key": ...}}``. Weight files in a directory are left out: they do not change a tokenizer.
    """
    path = Path(spec).expanduser()
    identity: dict[str, Any] = {"path": str(spec)}
    if path.is_file() and path.suffix.lower() == ".gguf":
        identity["gguf"] = gguf_identity(path)
    elif path.is_file():
        identity["files"] = _file_identity(path.parent, [path.name])
    elif path.is_dir():
        names = sorted(
            p.name
            for p in path.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix not in _WEIGHT_SUFFIXES
        )
        identity["files"] = _file_identity(path, names)
        ggufs = [n for n in names if n.lower().endswith(".gguf")]
        if len(ggufs) == 1:
            identity["gguf"] = gguf_identity(path / ggufs[0])
    return identity


# --- GGUF (the conversion itself is gguf_convert.py's) ---------------------------------------


def _resolve_gguf(
    spec: str, gguf_path: Path, flag: str, cache_root: Path, trust_remote_code: bool
) -> ModelSource:
    local_dir = convert_gguf(gguf_path, cache_root, flag)
    config = load_causal_lm_config(
        local_dir, spec=spec, role=flag[2:], trust_remote_code=trust_remote_code
    )
    identity = _gguf_source_identity(gguf_path)
    return ModelSource(
        spec=spec, kind="gguf", local_dir=local_dir, config=config, identity=identity
    )
