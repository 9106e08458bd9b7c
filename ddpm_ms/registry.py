"""One registry type for every named choice: schedules, losses, objectives, weightings, samplers.

An :class:`Entry` carries its name, a one-line summary, its metadata and where its implementation lives
(``"module:attribute"``, imported on first use), so names and metadata import without MindSpore::

    SAMPLERS = Registry("sampler")
    SAMPLERS.add("ddim", "ddpm_ms.samplers:sample_ddim", "DDIM (Song et al. 2021)", default_steps=50)
    SAMPLERS.load("ddim")        # the function
    SAMPLERS["ddim"].meta        # {"default_steps": 50}
"""
import importlib
from dataclasses import dataclass, field
from typing import Any, Dict

from .errors import ConfigError


@dataclass(frozen=True)
class Entry:
    """A registered choice: ``name``, ``target`` (the implementation, or "module:attribute" of it), ``summary``
    and ``meta`` (read as attributes too: ``entry.default_steps``)."""
    name: str
    target: Any
    summary: str
    meta: Dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, key):
        try:
            return self.__dict__["meta"][key]
        except KeyError:
            raise AttributeError(key) from None

    @property
    def fn(self):
        """The implementation (a "module:attribute" target is imported on first use)."""
        if not isinstance(self.target, str):
            return self.target
        if self.target not in _LOADED:
            module, attr = self.target.split(":")
            _LOADED[self.target] = getattr(importlib.import_module(module), attr)
        return _LOADED[self.target]


_LOADED = {}


class Registry:
    """Named entries of one ``kind`` (e.g. "sampler"), in the order they were added."""

    def __init__(self, kind):
        self.kind = kind
        self._entries = {}

    def add(self, name, target, summary, **meta):
        """Register ``name``; ``target`` is the implementation or "module:attribute" of it."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = Entry(name, target, summary, dict(meta))
        return self._entries[name]

    def names(self):
        """The registered names, in order."""
        return tuple(self._entries)

    def __contains__(self, name):
        return name in self._entries

    def __iter__(self):
        return iter(self._entries)

    def __len__(self):
        return len(self._entries)

    def items(self):
        """(name, Entry) pairs."""
        return self._entries.items()

    def __getitem__(self, name):
        """The Entry of ``name``; ConfigError naming the choices if there is none."""
        if name not in self._entries:
            raise ConfigError(f"unknown {self.kind} {name!r}; choose one of {', '.join(self._entries)}")
        return self._entries[name]

    def load(self, name):
        """The implementation of ``name`` (imported on first use)."""
        return self[name].fn
