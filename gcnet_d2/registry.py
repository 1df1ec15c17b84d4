"""Registration that survives re-imports (``importlib.reload``, two import paths)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from detectron2.utils.registry import Registry

T = TypeVar("T")


def register_once(registry: Registry) -> Callable[[T], T]:
    """Like ``@registry.register()``, but a second registration of the same object (same
    module and qualified name, e.g. after a reload) replaces the first instead of raising.
    A different object under the same name is still an error, naming both.
    """

    def deco(obj: T) -> T:
        name = obj.__name__
        if name in registry:
            old = registry.get(name)
            same = (old.__module__, old.__qualname__) == (obj.__module__, obj.__qualname__)
            if not same:
                raise KeyError(
                    f"{registry._name} already has {name!r} from {old.__module__}; "
                    f"gcnet_d2 cannot register {obj.__module__}.{obj.__qualname__} under it"
                )
            registry._obj_map[name] = obj
        else:
            registry.register(obj)
        return obj

    return deco
