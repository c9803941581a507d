"""Resolve ``--base`` / ``--donor`` / ``--tokenizer`` into local checkpoints and fast tokenizers.

This module owns telling what a spec is (a Hugging Face directory, single or sharded safetensors;
a ``.gguf`` file; a hub id), refusing pickled weights unless ``--allow-pickle`` is given, turning
``.gguf`` and pickled checkpoints into cached safetensors directories, checking that a config is a
causal LM, and loading *fast* tokenizers, with the known gaps of the GGUF tokenizer conversion
fixed. Which tensors are the embeddings, and reading or writing them, is ``checkpoint.py``'s job.

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
from .errors import MissingDependencyError, SourceError

logger = logging.getLogger(__name__)

SourceKind = Literal["hf_dir", "gguf", "hub"]

# Bump when the conversion output changes (e.g. a new tokenizer fix), so old caches are redone.
GGUF_CONVERTER_VERSION = 1
_MIB = 1 << 20
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

# Known gaps of transformers' GGUF tokenizer conversion, keyed by `tokenizer.ggml.pre`.
# Qwen2/Qwen3.5 tokenizer.json files normalize to NFC (transformers' own Qwen2Tokenizer does too).
_NFC_PRES = {"qwen2", "qwen35"}
# Llama-3's tokenizer.json sets ignore_merges (a whole pre-token in the vocab wins over merges).
_IGNORE_MERGES_PRES = {"llama-bpe", "llama3", "llama-v3"}
# llama.cpp splits every digit off before the GPT-2 regex for these (llama-vocab.cpp, "\p{N}").
_DIGIT_PRES = {"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"}
# Pre-tokenizer regexes of the original tokenizer.json files (Llama 3's comes from tiktoken's
# cl100k; Qwen2 differs only in splitting every digit, ``\p{N}`` instead of ``\p{N}{1,3}``).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = _LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")
_SPLIT_REGEX_BY_PRE = dict.fromkeys(_IGNORE_MERGES_PRES, _LLAMA3_SPLIT) | {"qwen2": _QWEN2_SPLIT}
_GGUF_SPECIAL_IDS = {
    "bos_token": "bos_token_id",
    "eos_token": "eos_token_id",
    "pad_token": "padding_token_id",
    "unk_token": "unknown_token_id",
}


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
        cached = _gguf_cache_path(path, cache_root)
        if (cached / "tokenizer.json").is_file():
            return AutoTokenizer.from_pretrained(cached)
        return _load_gguf_tokenizer(path, flag)[0]
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
        weight_files = list_weight_files(local_dir)
    identity: dict[str, Any] = {
        "kind": kind,
        "files": _file_identity(local_dir, ["config.json", *weight_files]),
    }
    if kind == "hub":
        identity["revision"] = local_dir.name  # snapshot directories are named by commit
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
        _rename_into_cache(tmp, out)
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


def path_identity(spec: str | Path) -> dict[str, Any]:
    """Identity of a ``--tokenizer`` path for the fingerprint (sizes and mtimes, nothing read).

    Example: ``path_identity("tok/")`` -> ``{"path": "tok/", "files": {"tokenizer.json":
    {"size": 2107, "mtime_ns": ...}, ...}}``; a ``.gguf`` gives ``{"path": ..., "gguf": {...,
    "hash_key": ...}}``. Weight files in a directory are left out: they do not change a tokenizer.
    """
    path = Path(spec).expanduser()
    identity: dict[str, Any] = {"path": str(spec)}
    if path.is_file() and path.suffix.lower() == ".gguf":
        identity["gguf"] = _gguf_identity(path)
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
            identity["gguf"] = _gguf_identity(path / ggufs[0])
    return identity


def _gguf_identity(gguf_path: Path) -> dict[str, Any]:
    stat = gguf_path.stat()
    return {
        "name": gguf_path.name,
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "hash_key": gguf_hash_key(gguf_path),
    }


def _rename_into_cache(tmp: Path, final: Path) -> None:
    """Atomically publish ``tmp`` as ``final``; if another process won the race, keep theirs."""
    try:
        os.rename(tmp, final)
    except OSError:
        if not (final / "config.json").is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


# --- GGUF -----------------------------------------------------------------------------------


def _require_gguf() -> Any:
    try:
        import gguf
    except ImportError:
        raise MissingDependencyError(
            "reading .gguf files needs the gguf package; install it with `pip install 'gguf>=0.10'`."
        ) from None
    return gguf


def gguf_hash_key(gguf_path: Path) -> str:
    """Short hash of size, mtime and the first and last MiB (cheap even for 100 GB files).

    The transformers major version is part of the key: v4 cannot read every config v5 writes.
    Example: ``gguf_hash_key(Path("SmolLM2-135M-Instruct.Q4_1.gguf"))`` -> ``"3f0c9a1d2b4e"``.
    """
    stat = gguf_path.stat()
    versions = f"v{GGUF_CONVERTER_VERSION}:tf{transformers.__version__.split('.')[0]}"
    digest = hashlib.sha256(f"{versions}:{stat.st_size}:{stat.st_mtime_ns}:".encode())
    with open(gguf_path, "rb") as f:
        digest.update(f.read(_MIB))
        f.seek(max(0, stat.st_size - _MIB))
        digest.update(f.read(_MIB))
    return digest.hexdigest()[:12]


def _gguf_cache_path(gguf_path: Path, cache_root: Path) -> Path:
    return cache_root / "gguf" / f"{gguf_path.stem}-{gguf_hash_key(gguf_path)}"


def _resolve_gguf(
    spec: str, gguf_path: Path, flag: str, cache_root: Path, trust_remote_code: bool
) -> ModelSource:
    _require_gguf()
    local_dir = _gguf_cache_path(gguf_path, cache_root)
    if (local_dir / "config.json").is_file():
        logger.info("reusing the conversion of %s in %s", gguf_path, local_dir)
    else:
        _convert_gguf(gguf_path, local_dir, flag)
    config = load_causal_lm_config(
        local_dir, spec=spec, role=flag[2:], trust_remote_code=trust_remote_code
    )
    identity = {"kind": "gguf", "gguf": _gguf_identity(gguf_path)}
    return ModelSource(
        spec=spec, kind="gguf", local_dir=local_dir, config=config, identity=identity
    )


def read_gguf_header(gguf_path: Path, flag: str = "--base") -> dict[str, Any]:
    """What the tokenizer fixes need from the GGUF metadata.

    Returns:
        ``{"architecture": "llama", "model": "gpt2", "pre": "smollm", "special_tokens":
        {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", ...}}``; ``pre`` and ``model``
        may be None, ``special_tokens`` has only the roles the file names.
    """
    gguf = _require_gguf()
    try:
        fields = gguf.GGUFReader(str(gguf_path)).fields
    except (ValueError, OSError) as exc:
        raise SourceError(
            f"{flag} {str(gguf_path)!r} is not a readable GGUF file ({exc})."
        ) from None

    def text(key: str) -> str | None:
        return str(fields[key].contents()) if key in fields else None

    special_tokens = {}
    for role, key in _GGUF_SPECIAL_IDS.items():
        if f"tokenizer.ggml.{key}" in fields and "tokenizer.ggml.tokens" in fields:
            token_id = int(fields[f"tokenizer.ggml.{key}"].contents())
            special_tokens[role] = str(fields["tokenizer.ggml.tokens"].contents(token_id))
    return {
        "architecture": text("general.architecture"),
        "model": text("tokenizer.ggml.model"),
        "pre": text("tokenizer.ggml.pre"),
        "special_tokens": special_tokens,
    }


def _convert_gguf(gguf_path: Path, local_dir: Path, flag: str) -> None:
    """Dequantize a GGUF into an fp32 safetensors directory with a fixed tokenizer, atomically."""
    header = read_gguf_header(gguf_path, flag)
    logger.info(
        "converting %s (%s) to safetensors in %s; later runs reuse it",
        gguf_path,
        header["architecture"],
        local_dir,
    )
    local_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = local_dir.parent / f".{local_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        try:
            model = AutoModelForCausalLM.from_pretrained(
                gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
            )
        except (ValueError, KeyError, NotImplementedError) as exc:
            raise SourceError(
                f"{flag} {str(gguf_path)!r} (architecture {header['architecture']!r}) cannot be loaded by "
                f"transformers from GGUF ({str(exc).splitlines()[0]}); pass the original Hugging Face checkpoint instead."
            ) from None
        # The weights are plain dequantized tensors now; only the quantizer marker blocks saving.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        del model
        tokenizer, fixes = _load_gguf_tokenizer(gguf_path, flag, header)
        tokenizer.save_pretrained(tmp)
        provenance = {
            "source": str(gguf_path.resolve()),
            "architecture": header["architecture"],
            "tokenizer_pre": header["pre"],
            "tokenizer_fixes": fixes,
            "converter_version": GGUF_CONVERTER_VERSION,
        }
        (tmp / "omp_init_gguf.json").write_text(json.dumps(provenance, indent=2) + "\n")
        _rename_into_cache(tmp, local_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _load_gguf_tokenizer(
    gguf_path: Path, flag: str, header: dict[str, Any] | None = None
) -> tuple[PreTrainedTokenizerFast, list[str]]:
    header = header or read_gguf_header(gguf_path, flag)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    except (ValueError, KeyError) as exc:
        raise SourceError(
            f"{flag} {str(gguf_path)!r}: transformers cannot build its tokenizer "
            f"({str(exc).splitlines()[0]}); pass --tokenizer with the original tokenizer directory."
        ) from None
    fixes = fix_gguf_tokenizer(tokenizer, header)
    if fixes:
        logger.info("fixed the GGUF tokenizer of %s: %s", gguf_path.name, ", ".join(fixes))
    return tokenizer, fixes


def fix_gguf_tokenizer(tokenizer: PreTrainedTokenizerFast, header: dict[str, Any]) -> list[str]:
    """Restore, in place, what transformers' GGUF tokenizer conversion loses.

    Decided from the GGUF metadata (:func:`read_gguf_header`), never from file names. Each fix
    is applied only where the tokenizer lacks it, so the result is the same whichever
    transformers version did the conversion (5.16 and 5.23 lose different things):

    - ``special_tokens``: bos/eos/pad/unk as the file's ids say (5.16 sets eos to the bos token);
    - ``no_space_cleanup``: byte-level vocabularies decode exactly, without "a ," -> "a,";
    - ``split_regex``: the pre-tokenizer regex of ``llama-bpe`` (Llama 3) and ``qwen2`` vocabularies;
    - ``nfc_normalizer`` (``qwen2``, ``qwen35``): ``"cafe\u0301"`` then encodes like ``"café"``;
    - ``ignore_merges`` (``llama-bpe``): a whole pre-token found in the vocabulary wins over merges;
    - ``individual_digits`` (``smollm``, ``starcoder``, ...): digits split one by one first, as
      llama.cpp does (``\\p{N}`` before the GPT-2 regex in llama-vocab.cpp).

    Returns:
        Names of the fixes applied, e.g. ``["nfc_normalizer"]``.
    """
    from tokenizers import Regex, normalizers, pre_tokenizers

    backend, pre = tokenizer.backend_tokenizer, header.get("pre")
    is_byte_level = header.get("model") == "gpt2"
    fixes = []
    wanted = dict(header.get("special_tokens", {}))
    if is_byte_level and "unk_token" not in wanted:
        wanted["unk_token"] = None  # a byte-level vocabulary has no unknown token
    wrong_roles = [role for role, token in wanted.items() if getattr(tokenizer, role) != token]
    for role in wrong_roles:
        setattr(tokenizer, role, wanted[role])
    if wrong_roles:
        fixes.append("special_tokens")
    if is_byte_level and getattr(tokenizer, "clean_up_tokenization_spaces", False):
        tokenizer.clean_up_tokenization_spaces = False  # it would turn "a ," into "a," on decode
        fixes.append("no_space_cleanup")
    split = _SPLIT_REGEX_BY_PRE.get(pre) if is_byte_level else None
    if split is not None and json.dumps(split)[1:-1] not in _component_json(backend.pre_tokenizer):
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        fixes.append("split_regex")
    if pre in _NFC_PRES and '"NFC"' not in _component_json(backend.normalizer):
        current = backend.normalizer
        backend.normalizer = (
            normalizers.NFC()
            if current is None
            else normalizers.Sequence([normalizers.NFC(), current])
        )
        fixes.append("nfc_normalizer")
    if pre in _IGNORE_MERGES_PRES and getattr(backend.model, "ignore_merges", True) is False:
        backend.model.ignore_merges = True
        fixes.append("ignore_merges")
    if pre in _DIGIT_PRES and '"Digits"' not in _component_json(backend.pre_tokenizer):
        digits = pre_tokenizers.Digits(individual_digits=True)
        current = backend.pre_tokenizer
        backend.pre_tokenizer = (
            digits if current is None else pre_tokenizers.Sequence([digits, current])
        )
        fixes.append("individual_digits")
    return fixes


def _component_json(component: Any) -> str:
    """JSON of a normalizer or pre-tokenizer (``""`` for None), e.g. ``'{"type":"NFC"}'``."""
    return "" if component is None else component.__getstate__().decode()
