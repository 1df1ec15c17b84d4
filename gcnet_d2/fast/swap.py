"""The one way a speed-up enters a built model: switching a module's class, and back.

Every speed-up of :mod:`gcnet_d2.fast` is a subclass of a plain module class with no
parameter or buffer of its own, so it is applied by setting ``module.__class__`` on the
modules of a built model: parameters, buffers, state-dict keys and hooks stay as they are.
:func:`swap_classes` does that and records each module's plain class in the module;
:func:`restore_classes` puts it back and drops the attributes the fast class keeps on the
module (named in its ``fast_attributes``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from torch import nn

__all__ = ["restore_classes", "swap_classes"]

#: Where a swapped module keeps the class it had (in its ``__dict__``, not in the state dict).
_PLAIN_CLASS = "_plain_class"

Choice = Mapping[type, type] | Callable[[nn.Module], "type | None"]


def swap_classes(model: nn.Module, choose: Choice) -> nn.Module:
    """Switch every module of ``model`` (itself included) to the class ``choose`` gives, in
    place; returns ``model``.

    ``choose``: a mapping from a plain class to its fast class (a module whose type is
    exactly a key is switched: subclasses with their own behaviour are left alone), or a
    function of the module returning its fast class or None. A module already of that class
    is left as it is.
    """
    if isinstance(choose, Mapping):
        table = dict(choose)

        def choose(module: nn.Module) -> type | None:
            return table.get(type(module))

    for module in model.modules():
        fast_class = choose(module)
        if fast_class is None or type(module) is fast_class:
            continue
        module.__dict__.setdefault(_PLAIN_CLASS, type(module))
        module.__class__ = fast_class
    return model


def restore_classes(
    model: nn.Module, fast_classes: type | tuple[type, ...] | None = None
) -> nn.Module:
    """Undo :func:`swap_classes` for the modules of ``model`` whose class is one of
    ``fast_classes`` (None: every module it switched), in place; returns ``model``.

    A module of a fast class that was not switched here (e.g. constructed as it) becomes
    the class that fast class derives from last (each fast class lists its plain class last
    among its bases).
    """
    if isinstance(fast_classes, type):
        fast_classes = (fast_classes,)
    for module in model.modules():
        cls = type(module)
        if fast_classes is not None and cls not in fast_classes:
            continue
        plain = module.__dict__.pop(_PLAIN_CLASS, None)
        if plain is None:
            if fast_classes is None:
                continue
            plain = cls.__bases__[-1]
        for name in getattr(cls, "fast_attributes", ()):
            module.__dict__.pop(name, None)
        module.__class__ = plain
    return model
