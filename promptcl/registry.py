"""One small registry class, instantiated once per kind of component (methods, backbones, datasets).

Registration happens when the module defining a component is imported. Importing this module
imports nothing else of promptcl: each registry finds its modules itself the first time it is
asked for a name, by importing every module of its packages (``promptcl.methods``,
``promptcl.data``) or its listed modules (``promptcl.backbones.zoo``). A new method is one file
in ``promptcl/methods/``, with no list to edit; a component defined elsewhere (a test, a user's
script) is registered by importing its module before the run is built.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
import sys
from collections.abc import Callable
from typing import Generic, TypeVar

from promptcl.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, packages: tuple[str, ...] = (), modules: tuple[str, ...] = ()):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._packages, self._modules = packages, modules
        self._discovered = False

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return decorator

    def discover(self) -> None:
        """Import every module of the registry's packages once, so that their components register."""
        if self._discovered:
            return
        self._discovered = True
        names = list(self._modules)
        for package in self._packages:
            path = importlib.import_module(package).__path__
            names += [f"{package}.{m.name}" for m in pkgutil.iter_modules(path)]
        for name in names:
            importlib.import_module(name)

    def get(self, name: str) -> T:
        self.discover()
        if name not in self._items:
            close = difflib.get_close_matches(name, self._items, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"unknown {self.kind} {name!r}.{hint} Known {self.kind}s: {', '.join(sorted(self._items))}"
            )
        return self._items[name]

    def names(self) -> list[str]:
        self.discover()
        return sorted(self._items)

    def describe(self, name: str) -> str:
        """The first line of the component's docstring (else its module's): ``promptcl list``
        and the documentation site show it."""
        obj = self.get(name)
        doc = obj.__doc__ or sys.modules[obj.__module__].__doc__ or ""
        lines = doc.strip().splitlines()
        return lines[0] if lines else ""

    def __contains__(self, name: str) -> bool:
        self.discover()
        return name in self._items


methods: Registry = Registry("method", packages=("promptcl.methods",))
backbones: Registry = Registry("backbone", modules=("promptcl.backbones.zoo",))
datasets: Registry = Registry("dataset", packages=("promptcl.data",))
