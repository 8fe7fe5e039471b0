"""Reversible changes to objects paraphrx does not own: set now, put back when the run ends.

`patch_attribute` is how paraphrx changes another library's attribute (a training argument, a trainer's method, a
model's forward, a transformers function, a torch setting): a context manager, entered on the run's `ExitStack`
(train_sft.main), whose exit puts back what was there.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

_NONE_OF_ITS_OWN = object()


@contextmanager
def patch_attribute(obj: Any, name: str, value: Any) -> Iterator[Any]:
    """`obj.<name> = value` until the context ends. Then the old value comes back or, where `obj` had no value of its
    own (it used its class's method, or had no such attribute), the attribute is removed again."""
    own = name in getattr(obj, "__dict__", {}) or (hasattr(obj, name) and not hasattr(type(obj), name))
    old = getattr(obj, name) if own else _NONE_OF_ITS_OWN
    setattr(obj, name, value)
    try:
        yield value
    finally:
        if old is _NONE_OF_ITS_OWN:
            delattr(obj, name)
        else:
            setattr(obj, name, old)


@contextmanager
def patch_attributes(obj: Any, **values: Any) -> Iterator[None]:
    """`patch_attribute` for several attributes of one object."""
    with ExitStack() as undo:
        for name, value in values.items():
            undo.enter_context(patch_attribute(obj, name, value))
        yield
