"""States as JSON: tensors as raw bytes (loading runs no code); anything else not JSON is refused by key."""

from __future__ import annotations

import base64
from typing import Any

import torch

from ..errors import InputStateError
from .schema import not_plain, to_plain

__all__ = ["decode_tensors", "to_json"]

# A tensor inside a state (e.g. the generator state in torchdata's RandomSampler state) is stored as
# {"__tensor__": {"dtype", "shape", "base64"}}: raw bytes, so loading it runs no code.
_TENSOR_KEY = "__tensor__"
_DTYPES = {
    str(d).removeprefix("torch."): d
    for d in (
        torch.bool,
        torch.uint8,
        torch.int8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.float16,
        torch.bfloat16,
        torch.float32,
        torch.float64,
    )
}


def to_json(obj: Any, path: str) -> Any:
    """``obj`` with tensors in their JSON form and tuples as lists; anything else non-JSON raises."""
    return to_plain(obj, path, _tensor_to_json)


def _tensor_to_json(obj: Any, path: str) -> Any:
    if not isinstance(obj, torch.Tensor):
        raise not_plain(obj, path)  # TypeError naming the key and the type
    dtype = str(obj.dtype).removeprefix("torch.")
    if dtype not in _DTYPES or obj.layout != torch.strided:
        raise TypeError(
            f"{path} is a {obj.dtype} {obj.layout} tensor; only dense tensors of "
            f"{sorted(_DTYPES)} can be saved in an input checkpoint"
        )
    data = _tensor_bytes(obj)
    return {_TENSOR_KEY: {"dtype": dtype, "shape": list(obj.shape), "base64": base64.b64encode(data).decode()}}


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    flat = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
    try:
        return flat.numpy().tobytes()  # ~1 µs for a generator state
    except RuntimeError:  # torch built without NumPy: correct, but about 1000x slower
        return bytes(flat.untyped_storage())[flat.storage_offset() : flat.storage_offset() + flat.numel()]


def decode_tensors(obj: Any, source: str) -> Any:
    """``obj`` with the JSON form of tensors turned back into tensors (from raw bytes, running no code)."""
    if isinstance(obj, dict):
        if len(obj) == 1 and _TENSOR_KEY in obj:
            spec = obj[_TENSOR_KEY]
            try:
                dtype = _DTYPES[spec["dtype"]]
                data = bytearray(base64.b64decode(spec["base64"], validate=True))
                flat = torch.frombuffer(data, dtype=dtype) if data else torch.empty(0, dtype=dtype)
                return flat.reshape(spec["shape"])
            except (KeyError, TypeError, ValueError, RuntimeError) as error:
                raise InputStateError(f"{source}: a saved tensor is malformed ({error})") from error
        return {key: decode_tensors(item, source) for key, item in obj.items()}
    if isinstance(obj, list):
        return [decode_tensors(item, source) for item in obj]
    return obj
