"""Nested state (dicts, lists, tuples, numbers, strings, tensors, NumPy arrays) in one safetensors file: no pickle.

The tensors go in the safetensors body; everything else is JSON in its header's metadata, with tensors
replaced by references, tuples and non-string dict keys spelled out. Reading parses the JSON header first,
so :func:`read_header` can check what a file claims (its identity, its tensors' shapes and sizes) before any
tensor is read, and nothing in the file can run code.

Example::

    write_state("fit.checkpoint.safetensors", {"step": 3, "rng": random.getstate()}, header={"recipe": ...})
    header = read_header("fit.checkpoint.safetensors")     # the JSON only
    state = read_state("fit.checkpoint.safetensors")        # the same values back, tuples as tuples
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["StateError", "write_state", "read_state", "read_header", "tensor_shapes"]

FORMAT = "pyro-bhpeft-state/1"
MAX_HEADER = 100_000_000  # safetensors' own limit on its JSON header


class StateError(ValueError):
    """A state file that is missing, of another format, corrupt, or claims more than it holds."""


def _encode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = value.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": str(value.dtype), "shape": list(value.shape)}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in value]}
    if isinstance(value, list):
        return [_encode(v, tensors) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: _encode(v, tensors) for k, v in value.items()}
        return {"__items__": [[_encode(k, tensors), _encode(v, tensors)] for k, v in value.items()]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot save a {type(value).__name__} without pickle")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        return tensors[value["__tensor__"]]
    if "__ndarray__" in value:
        dtype = np.dtype(value["dtype"])
        if dtype.kind not in "biuf":  # numbers only: nothing in a state file builds objects
            raise TypeError(f"array of dtype {dtype}")
        return np.asarray(value["__ndarray__"], dtype=dtype).reshape(value["shape"])
    if "__tuple__" in value:
        return tuple(_decode(v, tensors) for v in value["__tuple__"])
    if "__items__" in value:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in value["__items__"]}
    return {k: _decode(v, tensors) for k, v in value.items()}


def write_state(path: str | Path, state: Any, *, header: Any = None) -> Path:
    """Write ``state`` (and a JSON ``header`` readable alone, e.g. the identity of a fit) to ``path`` atomically."""
    from safetensors.torch import save_file

    from .io import atomic_file

    tensors: dict[str, torch.Tensor] = {}
    meta = {"format": FORMAT, "header": json.dumps(header), "state": json.dumps(_encode(state, tensors))}
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return Path(path)


def _raw_header(path: Path) -> dict[str, Any]:
    """The safetensors JSON header of ``path``, its tensor offsets checked against the file's size."""
    if not path.is_file():
        raise StateError(f"{path} does not exist or is not a file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        start = f.read(8)
        if len(start) < 8:
            raise StateError(f"{path} is not a safetensors file (too short)")
        (length,) = struct.unpack("<Q", start)
        if length > min(MAX_HEADER, size - 8):
            raise StateError(f"{path} is not a safetensors file (its header length is impossible)")
        try:
            raw = json.loads(f.read(length).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            raise StateError(f"{path} is not a safetensors file (unreadable header)") from None
    if not isinstance(raw, dict):
        raise StateError(f"{path} is not a safetensors file (unreadable header)")
    body = size - 8 - length
    for name, info in raw.items():
        if name == "__metadata__":
            continue
        shape, offsets = info.get("shape"), info.get("data_offsets")
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)
                and isinstance(offsets, list) and len(offsets) == 2 and 0 <= offsets[0] <= offsets[1] <= body):
            raise StateError(f"{path}: tensor {name!r} claims more than the file holds; the file is corrupt")
    return raw


def tensor_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor in the safetensors file ``path``, from its header (no tensor is read)."""
    return {k: tuple(v["shape"]) for k, v in _raw_header(Path(path)).items() if k != "__metadata__"}


def read_header(path: str | Path) -> Any:
    """The JSON ``header`` written with the state at ``path``; nothing else is read."""
    meta = _raw_header(Path(path)).get("__metadata__") or {}
    if meta.get("format") != FORMAT:
        raise StateError(f"{path} is not a pyro-bhpeft state file")
    try:
        return json.loads(meta["header"])
    except (KeyError, TypeError, json.JSONDecodeError, RecursionError):
        raise StateError(f"{path} is corrupt (unreadable header)") from None


def read_state(path: str | Path) -> Any:
    """The state written to ``path`` by :func:`write_state`."""
    from safetensors.torch import load_file

    path = Path(path)
    meta = _raw_header(path).get("__metadata__") or {}
    if meta.get("format") != FORMAT:
        raise StateError(f"{path} is not a pyro-bhpeft state file")
    try:
        encoded = json.loads(meta["state"])
        tensors = load_file(str(path))
        return _decode(encoded, tensors)
    except (KeyError, ValueError, TypeError, OSError, RecursionError) as err:
        raise StateError(f"{path} is corrupt ({type(err).__name__}); delete it") from None

