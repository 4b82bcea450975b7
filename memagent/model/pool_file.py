"""A memory pool on disk: safetensors with metadata, written atomically."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save

from memagent.model.long_term_memory import long_term_from_metadata
from memagent.model.memory_pool import MemoryPool

FORMAT = "memagent.pool/1"


class PoolFileError(ValueError):
    """A pool file is unreadable or belongs to another model."""


def write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path` (owner-only), fsync it, rename it over `path`,
    fsync the folder. A failure (disk full) leaves `path` as it was and no temporary file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def pool_to_bytes(pool: MemoryPool, fingerprint: str, *, sealed_to: int | None = None) -> bytes:
    """The pool file's bytes. `sealed_to`: a long-term memory of whole writes leaves out the tokens
    of its writes before that number, saved apart (`WriteMemory.state_dict`)."""
    L, N, d = pool.memory.shape
    metadata = {
        "format": FORMAT,
        "fingerprint": fingerprint,
        "layers": str(L),
        "size": str(N),
        "hidden": str(d),
        "dtype": str(pool.memory.dtype).removeprefix("torch."),
        "initialized": json.dumps(pool.initialized),
        "step": str(pool.step),
        "drop_per_layer": json.dumps(pool.drop_per_layer),
        "generator": base64.b64encode(pool.generator.get_state().numpy().tobytes()).decode(),
    }
    tensors = {"memory": pool.memory.detach().contiguous().cpu()}
    if pool.long_term is not None:
        metadata["long_term"] = pool.long_term.metadata()
        tensors |= pool.long_term.state_dict() if sealed_to is None else pool.long_term.state_dict(since=sealed_to)
    return save(tensors, metadata=metadata)


def save_pool(pool: MemoryPool, path: str | Path, fingerprint: str) -> None:
    write_atomically(Path(path), pool_to_bytes(pool, fingerprint))


def long_term_size(path: str | Path) -> int | None:
    """The long-term memory's `size` of a pool file, from its header alone (no tensor is read); None
    for a pool without long-term memory. Raises PoolFileError if the file is unreadable."""
    try:
        with safe_open(str(path), framework="pt") as f:
            if "long_term" not in (f.metadata() or {}):
                return None
            if "ltm_write_key_ends" in f.keys():  # whole writes: K tokens each, some maybe saved apart
                writes = f.get_slice("ltm_write_key_ends").get_shape()[0]
                return writes * json.loads(f.metadata()["long_term"])["tokens_per_write"]
            per_layer: dict[str, int] = {}
            for name in f.keys():
                kind, _, layer = name.rpartition(".")
                if kind in ("ltm", "ltm_pending"):
                    per_layer[layer] = per_layer.get(layer, 0) + f.get_slice(name).get_shape()[0]
    except Exception as err:
        raise PoolFileError(f"{path}: not a readable pool file ({err})") from err
    return max(per_layer.values(), default=0)


def load_pool(
    path: str | Path,
    fingerprint: str,
    *,
    device="cpu",
    dtype: torch.dtype | None = None,
    sealed: dict[str, torch.Tensor] | None = None,
) -> MemoryPool:
    """Read a pool written by `save_pool` (or `pool_to_bytes`) for the model with `fingerprint`;
    `sealed`: the long-term tokens it left out (`pool_to_bytes`'s `sealed_to`)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as err:
        raise PoolFileError(f"{path}: not a readable pool file ({err})") from err
    tensors |= sealed or {}
    if metadata.get("format") != FORMAT:
        raise PoolFileError(f"{path}: not a memagent pool file (format {metadata.get('format')!r})")
    if metadata["fingerprint"] != fingerprint:
        raise PoolFileError(
            f"{path}: this pool was written by another model (fingerprint {metadata['fingerprint']}, "
            f"this model is {fingerprint}); a pool only makes sense to the model that wrote it"
        )
    memory = tensors.pop("memory")
    memory = memory.to(device=device, dtype=dtype or memory.dtype)
    long_term = None
    if "long_term" in metadata:
        try:
            long_term = long_term_from_metadata(metadata["long_term"], tensors, memory)
        except (ValueError, KeyError, TypeError) as err:
            raise PoolFileError(f"{path}: damaged long-term memory ({err})") from err
    pool = MemoryPool(
        memory,
        json.loads(metadata["initialized"]),
        drop_per_layer=json.loads(metadata["drop_per_layer"]),
        long_term=long_term,
    )
    pool.step = int(metadata["step"])
    state = torch.frombuffer(bytearray(base64.b64decode(metadata["generator"])), dtype=torch.uint8)
    pool.generator.set_state(state)
    return pool
