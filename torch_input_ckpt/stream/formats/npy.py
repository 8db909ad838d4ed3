"""``.npy`` shards: sample ``k`` is ``array[k]`` (a row of a 2-D token array, or one element of a 1-D array).

Guarantee: the array is memory-mapped and indexed (no read before ``start``, any sample by number, a
batch by one fancy index); its count and token count come from its header alone, so a ``.npy`` path can be
given to a stream without an index. Refused before the work: a path that is not a regular file (a FIFO
would block ``np.load`` forever), an array whose rows hold 0 bytes (a header alone could claim 10**18 of
them). Refused as met, naming the file: a damaged header or a file shorter than its header says, a 0-d
array. Rows in a non-native byte order are converted (exact).
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from typing import Any

from ...errors import InputStateError
from ._bounds import check_regular

__all__ = ["NPY", "Npy", "NpyShard", "native", "npy_bytes"]


class Npy:
    """The ``.npy`` format: see the module's docstring."""

    name = ".npy array"
    suffixes = (".npy",)
    counted_from_header = True

    def count(self, path: str) -> int:
        """The array's length, from its header (no data read)."""
        return len(_memmap(path))

    def open(self, path: str, start: int) -> Iterator[Any]:
        """Rows ``start, start + 1, ...`` of the memory map (none read before ``start``)."""
        return _npy(path, start)

    def random_access(self, path: str) -> NpyShard:
        """The memory-mapped array."""
        return NpyShard(_memmap(path))

    def tokens(self, path: str) -> int:
        """The array's size: every element is a token id (a row is its sample's tokens)."""
        return int(_memmap(path).size)


NPY = Npy()


class NpyShard:
    """A memory-mapped ``.npy`` shard, read by index (the :class:`~.protocol.RandomAccess` of ``.npy``)."""

    __slots__ = ("array",)

    def __init__(self, array: Any) -> None:
        self.array = array

    def __len__(self) -> int:
        return len(self.array)

    def sample(self, k: int) -> Any:
        """Row ``k``, copied out of the memory map, in the machine's byte order."""
        import numpy as np

        return native(np.array(self.array[k]))

    def samples(self, ks: Sequence[int]) -> list[Any]:
        """Rows ``ks`` by one fancy index: one copy out of the memory map, as a plain array (rows of a
        memmap are slow memmap views), in the machine's byte order (torch takes native only)."""
        return list(native(self.array.__array__()[list(ks)]))

    def token_rows(self) -> Any | None:
        """The memory map itself when it is 2-D (one row of tokens per sample), else None."""
        return self.array if self.array.ndim == 2 else None


def native(array: Any) -> Any:
    """``array`` in the machine's byte order (a copy when it is not: exact, and what torch can take)."""
    if not array.dtype.isnative:
        return array.astype(array.dtype.newbyteorder("="))
    return array


def npy_bytes(data: bytes) -> Any:
    """A ``.npy`` file held in memory (a tar member), as a native array; its header is checked against its
    size first: np.load allocates the array its header claims before reading it (a header of shape
    (10**10,) in a 200-byte member: 80 GB).

    Raises:
        ValueError: for a damaged header, or one that claims more data than ``data`` holds.
    """
    import numpy as np

    return native(np.load(_sized_npy(data), allow_pickle=False))


def _sized_npy(data: bytes) -> io.BytesIO:
    import numpy as np

    stream = io.BytesIO(data)
    version = np.lib.format.read_magic(stream)
    if version not in ((1, 0), (2, 0)):
        raise ValueError(f".npy format version {version}; expected 1.0 or 2.0")
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read(stream)
    claimed = dtype.itemsize
    for n in shape:
        claimed *= n
    if claimed > len(data) - stream.tell():
        raise ValueError(
            f"its header claims {claimed} bytes of data (shape {shape}), it holds {len(data) - stream.tell()}"
        )
    stream.seek(0)
    return stream


def _memmap(path: str) -> Any:
    import numpy as np

    check_regular(path)
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (FileNotFoundError, PermissionError):
        raise
    except Exception as error:  # noqa: BLE001
        # np.load reports a damaged header or a file shorter than its header says with whatever its parser
        # raises (ValueError, EOFError, OverflowError, SyntaxError, ...): each is a damaged file, named here.
        raise InputStateError(
            f"{path}: not a readable .npy array ({type(error).__name__}: {error}); expected a .npy file "
            "of 1 or more dimensions, one sample per row"
        ) from None
    if array.ndim == 0:
        raise InputStateError(
            f"{path}: a 0-d array (shape ()); expected a .npy array of 1 or more dimensions, one sample per row"
        )
    if len(array) and array.nbytes == 0:
        # Samples of 0 bytes cost no file space: a header alone could claim 10**18 of them.
        raise InputStateError(
            f"{path}: {len(array)} samples of 0 bytes each (dtype {array.dtype.str}, shape {array.shape}); "
            "expected a .npy array whose rows hold data"
        )
    return array


def _npy(path: str, start: int) -> Iterator[Any]:
    import numpy as np

    array = _memmap(path)
    for k in range(start, len(array)):
        yield native(np.array(array[k]))
