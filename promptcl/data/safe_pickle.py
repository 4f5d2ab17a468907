"""The project's one reader of pickle files it did not write: plain data only, so a crafted file
cannot run code.

A pickle is a small program: besides building lists and dicts it may name any importable
function (a "global") and call it, which is how ``pickle.loads`` of a crafted file runs
``os.system``. ``load_restricted`` loads only what the opcodes themselves build (dicts, lists,
tuples, strings, bytes, numbers, booleans, None) and the few globals that rebuild plain data
(``set``, ``frozenset``, ``complex``, ``bytearray``, and ``_codecs.encode`` restricted to latin-1,
which protocol-2 pickles use for bytes). A caller may allow more globals by name, mapped to the
object to use in their place (CIFAR-100 allows numpy's array reconstruction, see
``promptcl.data.images``). Any other global stops the load before anything is called, with
``ForbiddenGlobal``, which names it.

Checkpoints are never pickles (see DESIGN.md); this module is for datasets' own files.
"""

from __future__ import annotations

import codecs
import io
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO


class ForbiddenGlobal(pickle.UnpicklingError):
    """A pickle named a global that the reader does not allow; nothing was called."""

    def __init__(self, module: str, name: str, source: str | None = None):
        self.module, self.name, self.source = module, name, source
        where = f"{source} was refused" if source else "the pickle was refused"
        super().__init__(
            f"{where}: it names the global {module}.{name}, and loading it would run code "
            "(only plain data is read: dicts, lists, tuples, strings, bytes, numbers and "
            "explicitly allowed globals); nothing was run"
        )

    @property
    def global_name(self) -> str:
        """``module.name`` of the refused global, e.g. ``posix.system``."""
        return f"{self.module}.{self.name}"


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes: latin-1 only."""
    if codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"bytes encoded as {encoding!r}, not latin-1")
    return codecs.encode(text, "latin-1", errors)


# Globals that only rebuild plain data, under their Python 3 and Python 2 module names.
PLAIN_GLOBALS: dict[tuple[str, str], Any] = {
    ("_codecs", "encode"): _latin1_encode,
    **{
        (module, obj.__name__): obj
        for module in ("builtins", "__builtin__")
        for obj in (set, frozenset, complex, bytearray)
    },
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(
        self, file: BinaryIO, allowed: Mapping[tuple[str, str], Any], source: str | None, **kw
    ):
        super().__init__(file, **kw)
        self._allowed, self._source = allowed, source

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if key in self._allowed:
            return self._allowed[key]
        if key in PLAIN_GLOBALS:
            return PLAIN_GLOBALS[key]
        raise ForbiddenGlobal(module, name, self._source)

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not plain data")


def load_restricted(
    file_or_path: str | os.PathLike[str] | bytes | BinaryIO,
    allowed: Mapping[tuple[str, str], Any] | None = None,
    encoding: str = "ASCII",
) -> Any:
    """The object in a pickle (a path, the bytes, or a binary file), loading plain data only.

    ``allowed`` maps further ``(module, name)`` globals to the objects to use for them.
    ``encoding`` decodes Python 2 ``str`` data, as in ``pickle.load`` ("latin1" for numpy
    arrays written by Python 2). Raises ``ForbiddenGlobal`` for any other global (nothing has
    been called then), and ``pickle.UnpicklingError`` or others for a damaged file.
    """
    allowed = allowed or {}
    if isinstance(file_or_path, bytes | bytearray):
        return _RestrictedUnpickler(
            io.BytesIO(file_or_path), allowed, None, encoding=encoding
        ).load()
    if isinstance(file_or_path, str | os.PathLike):
        path = Path(file_or_path)
        with path.open("rb") as f:
            return _RestrictedUnpickler(f, allowed, str(path), encoding=encoding).load()
    source = getattr(file_or_path, "name", None)
    return _RestrictedUnpickler(
        file_or_path, allowed, str(source) if source else None, encoding=encoding
    ).load()
