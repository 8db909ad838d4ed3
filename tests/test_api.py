"""The public surface: a sorted __all__ of things that exist, and typing information shipped."""

from __future__ import annotations

from pathlib import Path

import torch_input_ckpt


def test_all_is_sorted_and_exported():
    assert torch_input_ckpt.__all__ == sorted(torch_input_ckpt.__all__)
    assert all(hasattr(torch_input_ckpt, name) for name in torch_input_ckpt.__all__)


def test_py_typed_is_shipped():
    assert (Path(torch_input_ckpt.__file__).parent / "py.typed").is_file()


def test_unsupported_version_error_is_exported_and_is_what_the_version_checks_raise():
    from torch_input_ckpt import _compat, errors

    assert torch_input_ckpt.UnsupportedVersionError is errors.UnsupportedVersionError
    error = _compat.unsupported("torch", "0.0", "DataLoader._index_sampler", "2.13.0")
    assert isinstance(error, torch_input_ckpt.UnsupportedVersionError) and isinstance(error, RuntimeError)
