"""The public surface: a sorted __all__ of things that exist, and typing information shipped."""

from __future__ import annotations

from pathlib import Path

import torch_input_ckpt


def test_all_is_sorted_and_exported():
    assert torch_input_ckpt.__all__ == sorted(torch_input_ckpt.__all__)
    assert all(hasattr(torch_input_ckpt, name) for name in torch_input_ckpt.__all__)


def test_py_typed_is_shipped():
    assert (Path(torch_input_ckpt.__file__).parent / "py.typed").is_file()
