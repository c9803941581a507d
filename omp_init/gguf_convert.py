"""Convert a ``.gguf`` file into a cached Hugging Face directory with a working fast tokenizer.

This module owns everything GGUF: reading the header with the ``gguf`` package, keying the cache
by a cheap hash of the file, dequantizing the weights through transformers into an fp32
safetensors directory (written to a temp directory, then renamed into the cache), and fixing,
from the header, the known gaps of transformers' GGUF tokenizer conversion
(:func:`fix_gguf_tokenizer`). Telling that a spec *is* a ``.gguf``, checking that the result is a
causal LM and building the :class:`~omp_init.sources.ModelSource` are ``sources.py``'s job.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from .errors import MissingDependencyError, SourceError, disk_filled_error, is_disk_full

logger = logging.getLogger(__name__)

# Bump when the conversion output changes (e.g. a new tokenizer fix), so old caches are redone.
GGUF_CONVERTER_VERSION = 3  # 2: SentencePiece vocabularies get their BPE merges and BOS; 3: byte-level control tokens
_MIB = 1 << 20

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
# `tokenizer.ggml.token_type` values (llama.cpp's llama_token_type).
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6
_GGUF_SPECIAL_IDS = {
    "bos_token": "bos_token_id",
    "eos_token": "eos_token_id",
    "pad_token": "padding_token_id",
    "unk_token": "unknown_token_id",
}


# --- the file: header, cache key, identity ---------------------------------------------------


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


def gguf_identity(gguf_path: Path) -> dict[str, Any]:
    """Identity of a ``.gguf`` for the fingerprint (nothing but the hashed MiBs is read).

    Example: ``{"name": "m.gguf", "size": 4096, "mtime_ns": ..., "hash_key": "3f0c9a1d2b4e"}``.
    """
    stat = gguf_path.stat()
    return {
        "name": gguf_path.name,
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "hash_key": gguf_hash_key(gguf_path),
    }


def _gguf_cache_path(gguf_path: Path, cache_root: Path) -> Path:
    return cache_root / "gguf" / f"{gguf_path.stem}-{gguf_hash_key(gguf_path)}"


def read_gguf_header(gguf_path: Path, flag: str = "--base") -> dict[str, Any]:
    """What the tokenizer fixes need from the GGUF metadata.

    Returns:
        ``{"architecture": "llama", "model": "gpt2", "pre": "smollm", "special_tokens":
        {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", ...}, "add_bos_token": False,
        "add_eos_token": None, "add_space_prefix": None}``; ``pre``, ``model`` and the
        ``add_*`` flags may be None (not in the file), ``special_tokens`` has only the roles the
        file names. ``added_pieces`` lists the control and user-defined tokens with their type,
        e.g. ``[("<|fim_prefix|>", 3), ("<tool_call>", 4)]``. SentencePiece files (``model``
        ``"llama"``) also get ``"spm"``: their ``tokens``, ``scores`` and token ``types``.
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
    def flag_value(key: str) -> bool | None:
        return bool(fields[key].contents()) if key in fields else None

    tokens = [str(t) for t in fields["tokenizer.ggml.tokens"].contents()] if "tokenizer.ggml.tokens" in fields else []
    types = (
        [int(x) for x in fields["tokenizer.ggml.token_type"].contents()]
        if "tokenizer.ggml.token_type" in fields
        else None
    )
    header = {
        "architecture": text("general.architecture"),
        "model": text("tokenizer.ggml.model"),
        "pre": text("tokenizer.ggml.pre"),
        "special_tokens": special_tokens,
        "add_bos_token": flag_value("tokenizer.ggml.add_bos_token"),
        "add_eos_token": flag_value("tokenizer.ggml.add_eos_token"),
        "add_space_prefix": flag_value("tokenizer.ggml.add_space_prefix"),
        "added_pieces": [
            (token, kind)
            for token, kind in zip(tokens, types or [], strict=False)
            if kind in (_CONTROL, _USER_DEFINED)
        ],
    }
    if header["model"] == "llama" and "tokenizer.ggml.scores" in fields:
        # SentencePiece vocabularies carry scores, not merges; the merges are rebuilt from them.
        header["spm"] = {
            "tokens": tokens,
            "scores": [float(x) for x in fields["tokenizer.ggml.scores"].contents()],
            "types": types,
        }
    return header


# --- the cached conversion -------------------------------------------------------------------


def convert_gguf(gguf_path: Path, cache_root: Path, flag: str) -> Path:
    """Return the cached HF directory of ``gguf_path``, converting the file first if needed.

    Args:
        gguf_path: the ``.gguf`` file.
        cache_root: root of the conversion cache; the result is ``cache_root/gguf/<stem>-<key>``.
        flag: ``--base``/``--donor``, for error messages.

    Returns:
        A directory with ``config.json``, fp32 ``model.safetensors``, the fixed tokenizer and
        ``omp_init_gguf.json`` (provenance and the fixes applied).

    Raises:
        MissingDependencyError: ``gguf`` is not installed.
        SourceError: not a readable GGUF, or transformers cannot load its architecture.
    """
    _require_gguf()
    local_dir = _gguf_cache_path(gguf_path, cache_root)
    if (local_dir / "config.json").is_file():
        logger.info("reusing the conversion of %s in %s", gguf_path, local_dir)
    else:
        _write_conversion(gguf_path, local_dir, flag)
    return local_dir


def load_gguf_tokenizer(gguf_path: Path, cache_root: Path, flag: str) -> PreTrainedTokenizerFast:
    """The fixed tokenizer of ``gguf_path``: the cached conversion's if there is one, else built.

    Raises:
        MissingDependencyError: ``gguf`` is not installed.
        SourceError: not a readable GGUF, or transformers cannot build its tokenizer.
    """
    cached = _gguf_cache_path(gguf_path, cache_root)
    if (cached / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(cached)
    return _build_gguf_tokenizer(gguf_path, flag)[0]


def _write_conversion(gguf_path: Path, local_dir: Path, flag: str) -> None:
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
        except MemoryError:
            raise
        except Exception as exc:  # transformers raises many types here (config validation too)
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
        tokenizer, fixes = _build_gguf_tokenizer(gguf_path, flag, header)
        tokenizer.save_pretrained(tmp)
        provenance = {
            "source": str(gguf_path.resolve()),
            "architecture": header["architecture"],
            "tokenizer_pre": header["pre"],
            "tokenizer_fixes": fixes,
            "converter_version": GGUF_CONVERTER_VERSION,
        }
        (tmp / "omp_init_gguf.json").write_text(json.dumps(provenance, indent=2) + "\n")
        rename_into_cache(tmp, local_dir)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(exc):
            raise disk_filled_error(
                f"{flag} {str(gguf_path)!r}", f"converting it into {local_dir.parent}", local_dir.parent,
                "the fp32 conversion needs about 4 bytes per parameter; free some space or pass --cache-dir on another disk.",
            ) from exc
        raise


def rename_into_cache(tmp: Path, final: Path) -> None:
    """Atomically publish ``tmp`` as ``final``; if another process won the race, keep theirs.

    Shared with ``sources.py`` (its cached pickle conversions).
    """
    try:
        os.rename(tmp, final)
    except OSError:
        if not (final / "config.json").is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def _build_gguf_tokenizer(
    gguf_path: Path, flag: str, header: dict[str, Any] | None = None
) -> tuple[PreTrainedTokenizerFast, list[str]]:
    """Build the tokenizer from the GGUF through transformers and fix it; also the fixes' names."""
    header = header or read_gguf_header(gguf_path, flag)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    except MemoryError:
        raise
    except Exception as exc:  # e.g. Gemma 4's per-layer head counts fail config validation
        raise SourceError(
            f"{flag} {str(gguf_path)!r}: transformers cannot build its tokenizer "
            f"({str(exc).splitlines()[0]}); pass --tokenizer with the original tokenizer directory."
        ) from None
    fixes = fix_gguf_tokenizer(tokenizer, header)
    if fixes:
        logger.info("fixed the GGUF tokenizer of %s: %s", gguf_path.name, ", ".join(fixes))
    return tokenizer, fixes


# --- tokenizer fixes -------------------------------------------------------------------------


def fix_gguf_tokenizer(tokenizer: PreTrainedTokenizerFast, header: dict[str, Any]) -> list[str]:
    """Restore, in place, what transformers' GGUF tokenizer conversion loses.

    Decided from the GGUF metadata (:func:`read_gguf_header`), never from file names. Each fix
    is applied only where the tokenizer lacks it, so the result is the same whichever
    transformers version did the conversion (5.16 and 5.23 lose different things):

    - ``spm_merges``, ``spm_text`` (SentencePiece files: Gemma 3, Phi-3): a BPE with merges
      rebuilt from the scores and byte fallback, spaces as ``▁`` (one in front where
      ``add_space_prefix`` says so) and back;
    - ``added_tokens``: control tokens as special added tokens, user-defined ones as added
      words (Gemma's ``<start_of_turn>``, Qwen2.5's ``<|fim_prefix|>`` and ``<tool_call>``);
    - ``special_tokens``: bos/eos/pad/unk as the file's ids say (5.16 sets eos to the bos token);
    - ``document_tokens``: ``<bos>`` (``<eos>``) around every text where ``add_bos_token``
      (``add_eos_token``) says so;
    - ``no_space_cleanup``: byte-level vocabularies decode exactly, without "a ," -> "a,";
    - ``split_regex``: the pre-tokenizer regex of ``llama-bpe`` (Llama 3) and ``qwen2`` vocabularies;
    - ``nfc_normalizer`` (``qwen2``, ``qwen35``): ``"cafe\u0301"`` then encodes like ``"café"``;
    - ``ignore_merges`` (``llama-bpe``): a whole pre-token found in the vocabulary wins over merges;
    - ``individual_digits`` (``smollm``, ``starcoder``, ...): digits split one by one first, as
      llama.cpp does (``\\p{N}`` before the GPT-2 regex in llama-vocab.cpp).

    Returns:
        Names of the fixes applied, e.g. ``["nfc_normalizer"]``.
    """
    fixes = []
    for name, apply_fix in _FIXES:
        if apply_fix(tokenizer, header):
            fixes.append(name)
    return fixes


def _is_byte_level(header: dict[str, Any]) -> bool:
    """``{"model": "gpt2"}`` -> True (GPT-2 style byte-level BPE); ``{"model": "llama"}`` -> False."""
    return header.get("model") == "gpt2"


def _fix_special_tokens(tokenizer: PreTrainedTokenizerFast, header: dict[str, Any]) -> bool:
    """Set each role the header names to its token, e.g. ``eos_token`` ``"<s>"`` -> ``"</s>"``.

    A byte-level vocabulary has no unknown token, so there ``unk_token`` becomes None unless the
    header names one.
    """
    wanted = dict(header.get("special_tokens", {}))
    if _is_byte_level(header) and "unk_token" not in wanted:
        wanted["unk_token"] = None  # a byte-level vocabulary has no unknown token
    wrong_roles = [role for role, token in wanted.items() if getattr(tokenizer, role) != token]
    for role in wrong_roles:
        setattr(tokenizer, role, wanted[role])
    return bool(wrong_roles)


def _fix_space_cleanup(tokenizer: PreTrainedTokenizerFast, header: dict[str, Any]) -> bool:
    """Byte-level vocabularies decode exactly: ``decode(encode("a ,"))`` stays ``"a ,"``."""
    if not (_is_byte_level(header) and getattr(tokenizer, "clean_up_tokenization_spaces", False)):
        return False
    tokenizer.clean_up_tokenization_spaces = False  # it would turn "a ," into "a," on decode
    return True


def _fix_split_regex(tokenizer: PreTrainedTokenizerFast, header: dict[str, Any]) -> bool:
    """Put back the original split regex, e.g. ``llama-bpe``: ``"2025"`` -> ``"202"``, ``"5"``."""
    backend = tokenizer.backend_tokenizer
    split = _SPLIT_REGEX_BY_PRE.get(header.get("pre")) if _is_byte_level(header) else None
    if split is None or json.dumps(split)[1:-1] in _component_json(backend.pre_tokenizer):
        return False
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    return True


def _fix_nfc_normalizer(tokenizer: PreTrainedTokenizerFast, header: dict[str, Any]) -> bool:
    """Normalize to NFC first (``qwen2``, ``qwen35``): ``"cafe\u0301"`` encodes like ``"café"``."""
    backend = tokenizer.backend_tokenizer
    if header.get("pre") not in _NFC_PRES or '"NFC"' in _component_json(backend.normalizer):
        return False
    current = backend.normalizer
    backend.normalizer = (
        normalizers.NFC() if current is None else normalizers.Sequence([normalizers.NFC(), current])
    )
    return True


def _fix_ignore_merges(tokenizer: PreTrainedTokenizerFast, header: dict[str, Any]) -> bool:
    """Llama 3 (``llama-bpe``): a whole pre-token in the vocabulary wins over the merges."""
    backend = tokenizer.backend_tokenizer
    if (
        header.get("pre") not in _IGNORE_MERGES_PRES
        or getattr(backend.model, "ignore_merges", True) is not False
    ):
        return False
    backend.model.ignore_merges = True
    return True


def _fix_individual_digits(tokenizer: PreTrainedTokenizerFast, header: dict[str, Any]) -> bool:
    """Split digits one by one before the rest (``smollm``, ...): ``"2025"`` -> ``"2"``, ``"0"``, ..."""
    backend = tokenizer.backend_tokenizer
    if header.get("pre") not in _DIGIT_PRES or '"Digits"' in _component_json(backend.pre_tokenizer):
        return False
    digits = pre_tokenizers.Digits(individual_digits=True)
    current = backend.pre_tokenizer
    backend.pre_tokenizer = (
        digits if current is None else pre_tokenizers.Sequence([digits, current])
    )
    return True


def spm_merges(tokens: list[str], scores: list[float], types: list[int] | None) -> list[tuple[str, str]]:
    """BPE merges that reproduce SentencePiece's BPE from its scores, best merge first.

    SentencePiece merges, at each step, the adjacent pair whose concatenation is the
    highest-scoring piece of the vocabulary; a GGUF keeps those scores but no merge list.
    Every way to cut a normal or user-defined piece into two such pieces is a merge, ranked by
    the whole piece's score (then by id, then by cut), so the ``tokenizers`` BPE picks the pair
    SentencePiece would. Control, byte and unused pieces are never merged into.

    Example: tokens ``["a", "b", "ab", "c", "abc"]``, scores ``[0, 0, -1, 0, -2]`` ->
    ``[("a", "b"), ("ab", "c")]`` (and ``("a", "bc")`` too, were ``"bc"`` a piece).
    """
    mergeable = {}
    for token_id, (token, score) in enumerate(zip(tokens, scores, strict=True)):
        kind = types[token_id] if types is not None else _NORMAL
        if kind in (_NORMAL, _USER_DEFINED) and token not in mergeable:
            mergeable[token] = (score, token_id)
    ranked = []
    for token, (score, token_id) in mergeable.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in mergeable and right in mergeable:
                ranked.append((-score, token_id, cut, left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def _fix_spm_merges(tokenizer: PreTrainedTokenizerFast, header: dict[str, Any]) -> bool:
    """SentencePiece GGUFs: a BPE with merges from the scores and byte fallback.

    transformers 5.16 builds Gemma 3's vocabulary as a Unigram model that cuts ``"world"`` into
    ``"w"``, ``"or"``, ``"ld"`` and saves it as a BPE without merges (one token per character).
    """
    spm = header.get("spm")
    if not spm:
        return False
    backend = tokenizer.backend_tokenizer
    current = json.loads(backend.to_str())["model"]
    if current.get("type") == "BPE" and current.get("merges") and current.get("byte_fallback"):
        return False
    vocab: dict[str, int] = {}
    for token_id, token in enumerate(spm["tokens"]):
        vocab.setdefault(token, token_id)
    unk = header.get("special_tokens", {}).get("unk_token")
    backend.model = models.BPE(
        vocab=vocab,
        merges=spm_merges(spm["tokens"], spm["scores"], spm["types"]),
        unk_token=unk if unk in vocab else None,
        fuse_unk=True,
        byte_fallback=True,
    )
    return True


def _fix_added_tokens(tokenizer: PreTrainedTokenizerFast, header: dict[str, Any]) -> bool:
    """Control tokens become special tokens, user-defined tokens whole words (any vocabulary).

    SentencePiece never cuts a user-defined piece (Gemma's ``"\\n\\n"``, ``"<table>"``) and
    never produces a control piece (``<start_of_turn>``) from text; llama.cpp matches both in the
    raw text first, as the original ``tokenizer.json`` does with its added tokens. transformers
    5.16 keeps only the roles it names: Qwen2.5's ``<|fim_prefix|>`` came out as seven byte-level
    pieces and ``<tool_call>`` as four, and a transplant between two Qwen2.5 sizes (identical
    vocabularies) rebuilt those 19 rows instead of copying them.
    """
    pieces = header.get("added_pieces") or []
    backend = tokenizer.backend_tokenizer
    present = {added.content for added in backend.get_added_tokens_decoder().values()}
    control = [AddedToken(t, special=True, normalized=False) for t, kind in pieces if kind == _CONTROL and t not in present]
    user_defined = [
        AddedToken(t, special=False, normalized=False) for t, kind in pieces if kind == _USER_DEFINED and t not in present
    ]
    if control:
        backend.add_special_tokens(control)
    if user_defined:
        backend.add_tokens(user_defined)
    return bool(control or user_defined)


def _fix_spm_text(tokenizer: PreTrainedTokenizerFast, header: dict[str, Any]) -> bool:
    """SentencePiece GGUFs: spaces become ``▁`` (with one in front where ``add_space_prefix``
    says so, llama.cpp's default when the file does not say) and decode back to spaces.

    transformers 5.16 converts Phi-3's file with neither: ``"ied 4 ½"`` lost its spaces.
    """
    if not header.get("spm"):
        return False
    backend = tokenizer.backend_tokenizer
    prefix = header.get("add_space_prefix") is not False  # llama.cpp's default: a prefix
    normalizer = _component_json(backend.normalizer)
    pre_tokenizer = _component_json(backend.pre_tokenizer)
    has_marker = '"Metaspace"' in pre_tokenizer or ('"Replace"' in normalizer and "▁" in normalizer)
    has_prefix = '"Prepend"' in normalizer or '"prepend_scheme":"always"' in pre_tokenizer
    changed = False
    if not has_marker:
        backend.normalizer = normalizers.Sequence(
            ([normalizers.Prepend("▁")] if prefix else []) + [normalizers.Replace(" ", "▁")]
        )
        changed = True
    elif prefix and not has_prefix:
        current = backend.normalizer
        prepend = normalizers.Prepend("▁")
        backend.normalizer = prepend if current is None else normalizers.Sequence([prepend, current])
        changed = True
    if "▁" not in _component_json(backend.decoder):
        steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
        backend.decoder = decoders.Sequence(steps + ([decoders.Strip(" ", 1, 0)] if prefix else []))
        changed = True
    return changed


def _fix_document_tokens(tokenizer: PreTrainedTokenizerFast, header: dict[str, Any]) -> bool:
    """Add BOS/EOS around every text where the file says so (``add_bos_token``: Gemma's ``<bos>``).

    The document-start policy reads this: without it a Gemma base looked like one that adds
    nothing, and its transplants lost the ``<bos>`` the model needs.
    """
    named = header.get("special_tokens", {})
    wanted = {
        role: named[role]
        for role, flag in (("bos_token", "add_bos_token"), ("eos_token", "add_eos_token"))
        if header.get(flag) and named.get(role) is not None
    }
    backend = tokenizer.backend_tokenizer
    ids = {role: backend.token_to_id(token) for role, token in wanted.items()}
    if not wanted or None in ids.values():
        return False
    encoded = backend.encode("a", add_special_tokens=True).ids
    has_bos = "bos_token" not in ids or encoded[:1] == [ids["bos_token"]]
    has_eos = "eos_token" not in ids or encoded[-1:] == [ids["eos_token"]]
    if has_bos and has_eos:
        return False
    bos = f"{wanted['bos_token']}:0 " if "bos_token" in wanted else ""
    eos = f" {wanted['eos_token']}:0" if "eos_token" in wanted else ""
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos}$A:0{eos}",
        pair=f"{bos}$A:0{eos} {bos.replace(':0', ':1')}$B:1{eos.replace(':0', ':1')}",
        special_tokens=[(wanted[role], ids[role]) for role in wanted],
    )
    for role in wanted:  # transformers' own flags, so a reload keeps the template
        setattr(tokenizer, f"add_{role.split('_')[0]}_token", True)
    return True


# In this order: the digit split goes in front of the pre-tokenizer the split-regex fix may set.
_FIXES: list[tuple[str, Callable[[PreTrainedTokenizerFast, dict[str, Any]], bool]]] = [
    ("spm_merges", _fix_spm_merges),
    ("added_tokens", _fix_added_tokens),
    ("spm_text", _fix_spm_text),
    ("special_tokens", _fix_special_tokens),
    ("document_tokens", _fix_document_tokens),
    ("no_space_cleanup", _fix_space_cleanup),
    ("split_regex", _fix_split_regex),
    ("nfc_normalizer", _fix_nfc_normalizer),
    ("ignore_merges", _fix_ignore_merges),
    ("individual_digits", _fix_individual_digits),
]


def _component_json(component: Any) -> str:
    """JSON of a normalizer or pre-tokenizer (``""`` for None), e.g. ``'{"type":"NFC"}'``."""
    return "" if component is None else component.__getstate__().decode()
