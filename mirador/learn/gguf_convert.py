"""A GGUF model as a Hugging Face model folder, so that the adapter is trained on the weights users run.

transformers reads GGUF itself (`from_pretrained(..., gguf_file=...)`): it dequantizes every tensor
with the `gguf` package (gguf.quants.dequantize), undoes llama.cpp's Q/K row permutation for the
llama architecture, and builds the tokenizer from tokenizer.ggml.tokens/merges with the GGUF's chat
template. It works offline on a local file. We only add what it lacks: a cache keyed by the blob's
sha256 (dequantizing takes seconds, training runs nightly), written atomically so that a kill
mid-conversion never leaves a half folder that a later run would trust. The done marker records the
sha256 and size of every file in the folder and each use verifies them all: hashing the ~540 MB of
SmolLM2-135M's float32 weights takes about 0.45 s here (against seconds to load them and minutes to
train), cheap enough to do always, which also catches a damaged file whose mtime was kept. A folder
that fails the check (a file changed, missing, or a marker from an older version) is rebuilt, and
the caller is told why.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mirador.errors import MiradorError

# Architectures whose GGUF tensors transformers maps back to a Hugging Face model and that llama.cpp
# accepts LoRA adapters for with the tensor names export.py writes.
SUPPORTED_ARCHITECTURES = ("llama",)
_DONE = "mirador-converted.txt"  # written last: its presence means the folder is complete


class ConversionError(MiradorError):
    """The GGUF cannot be turned into a trainable model."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def cache_root() -> Path:
    from mirador.config import paths

    return paths().data_dir / "learn" / "base"


def converted_dir(gguf_path: Path, root: Path | None = None, digest: str | None = None,
                  note: Callable[[str], None] | None = None) -> Path:
    """The Hugging Face folder (safetensors, config.json, tokenizer) of a GGUF, converting it once.

    `note` hears why a cached folder was rebuilt (a file that no longer matches its digest)."""
    gguf_path = Path(gguf_path)
    check_architecture(gguf_path)
    digest = digest or sha256_file(gguf_path)
    root = root or cache_root()
    out = root / digest
    if (out / _DONE).is_file():
        problem = verify_cache(out)
        if problem is None:
            return out
        if note is not None:
            note(f"the cached conversion {out} is damaged ({problem}): converting again")
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = root / f".{digest}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model, tokenizer = _load_from_gguf(gguf_path)
        _save(model, tmp)
        tokenizer.save_pretrained(tmp)
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        files = "".join(f"file {sha256_file(f)} {f.stat().st_size} {f.name}\n"
                        for f in sorted(tmp.iterdir()) if f.is_file())
        (tmp / _DONE).write_text(f"{gguf_path}\nsha256 {digest}\n{when}\n{files}", encoding="utf-8")
        if out.is_symlink():
            out.unlink()
        shutil.rmtree(out, ignore_errors=True)  # an incomplete or damaged folder
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def check_architecture(gguf_path: Path) -> Any:
    """The GGUF's header (runtime.gguf.GGUFHeader) if the converter handles its architecture; a
    ConversionError naming the architecture if not.

    Reads only the header: cheap enough to run before the training libraries are even imported."""
    from mirador.runtime.gguf import GGUFError, read_header

    try:
        header = read_header(Path(gguf_path))
    except GGUFError as exc:
        raise ConversionError(f"{gguf_path} is not a usable GGUF file: {exc}") from None
    if header.architecture not in SUPPORTED_ARCHITECTURES:
        raise ConversionError(
            f"training supports the {', '.join(SUPPORTED_ARCHITECTURES)} architecture, not "
            f"'{header.architecture}' ({Path(gguf_path).name})",
            hint="train on a llama-family model (smollm2, llama3, …)")
    return header


def verify_cache(folder: Path) -> str | None:
    """None if every file the done marker lists is there with its recorded size and sha256, else why not."""
    try:
        lines = (folder / _DONE).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        return f"its marker cannot be read: {exc.strerror}"
    listed = [line.split(" ", 3) for line in lines if line.startswith("file ")]
    if not listed or any(len(parts) != 4 for parts in listed):
        return "its marker lists no file digests (an older version made it)"
    for _, digest, size, name in listed:
        path = folder / name
        try:
            actual = path.stat().st_size
        except OSError:
            return f"{name} is missing"
        if str(actual) != size:
            return f"{name} has {actual} bytes, {size} were written"
        if sha256_file(path) != digest:
            return f"{name} does not match its recorded sha256"
    return None


def _load_from_gguf(gguf_path: Path) -> tuple[Any, Any]:
    _offline()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                     dtype="float32")
    except (ValueError, OSError, KeyError) as exc:
        raise ConversionError(f"cannot convert {gguf_path.name} to a trainable model: {exc}") from None
    return model, tokenizer


def _save(model: Any, folder: Path) -> None:
    # transformers marks a model read from GGUF as "quantized with gguf" and refuses save_pretrained,
    # although its weights are plain float32 by now: write config and safetensors ourselves.
    from safetensors.torch import save_model

    folder.mkdir(parents=True, exist_ok=True)
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(folder)
    save_model(model, str(folder / "model.safetensors"), metadata={"format": "pt"})  # tied weights once


def load_model(folder: Path) -> tuple[Any, Any]:
    """(model, tokenizer) from a converted folder, float32 (LoRA on CPU wants full precision)."""
    _offline()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype="float32")
    return model, tokenizer


def _offline() -> None:
    # Everything is local: never let a library reach for the Hugging Face Hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    # Progress bars and deprecation notes are library chatter, not Mirador's output (cron mails it).
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TQDM_DISABLE", "1")
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\..*")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
