"""Every touch of a third-party private API, one module per third party, each checked once against the version found.

torch's ``DataLoader`` hooks and CPU generator (``torch``), the keys of torchdata's ``StatefulDataLoader``
state (``torchdata``), Lightning's loop internals (``lightning``), transformers' ``Trainer`` and
accelerate's ``GradientState`` internals (``hf``), CPython's ``random.Random`` struct (``cpython``) and
NumPy's MT19937 (``numpy``) are not public and may change between releases. Code elsewhere in the
package calls the functions here instead of touching them; each check raises
:class:`~torch_input_ckpt.errors.UnsupportedVersionError` naming the package, the version found, what is
missing and the version this was written for. Lightning and Hugging Face are never imported here: the
functions take their objects as arguments.
"""

from __future__ import annotations

from ..errors import UnsupportedVersionError

__all__ = ["unsupported"]


def unsupported(package: str, version: str, missing: str, tested: str) -> UnsupportedVersionError:
    """The error for ``package`` ``version`` lacking ``missing`` (this library was written for ``tested``)."""
    return UnsupportedVersionError(
        f"torch_input_ckpt does not support {package} {version}: it lacks {missing} (written for {tested})"
    )
