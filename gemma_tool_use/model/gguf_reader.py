"""Opening a GGUF file: gguf's own GGUFReader, with its fields parsed over a plain array.

GGUFReader slices its np.memmap once per value while it parses the metadata, and a memmap
slice is a memmap subclass with Python-level bookkeeping on every view: for the 262,144-token
vocabulary that is most of the time to open a Gemma 3 file. Parsing over an ndarray view of the
same mapped buffer gives the same fields and tensors (tests/test_weights.py compares them) at a
fraction of the cost (experiments/test_suite_time/README.md). Should gguf rename the hook, the
reader simply parses the slow way.
"""

from __future__ import annotations

import functools
import os

import numpy as np


@functools.cache
def _reader_class():
    import gguf

    class PlainArrayReader(gguf.GGUFReader):
        def _build_fields(self, offs, count):
            self.data = self.data.view(np.ndarray)  # same buffer, no memmap subclass per slice
            return super()._build_fields(offs, count)

    return PlainArrayReader


def open_gguf(path: str | os.PathLike):
    """A gguf.GGUFReader of `path` (read-only memory map)."""
    return _reader_class()(str(path))
