"""patch_attribute puts back exactly what was there: an own value, a class's method, or nothing."""

import types

from paraphrx.patches import patch_attribute, patch_attributes


class _Thing:
    def method(self):
        return "class"


def test_own_values_inherited_methods_and_new_attributes_are_restored():
    thing, module = _Thing(), types.ModuleType("lib")
    thing.value, module.function = 1, len
    with (
        patch_attribute(thing, "value", 2),
        patch_attribute(thing, "method", lambda: "patched"),
        patch_attribute(thing, "extra", 3),
        patch_attribute(module, "function", max),
    ):
        assert (thing.value, thing.method(), thing.extra, module.function) == (2, "patched", 3, max)
    assert thing.value == 1 and module.function is len
    assert "method" not in vars(thing) and thing.method() == "class"  # the class's method again, not a copy of it
    assert not hasattr(thing, "extra")


def test_several_at_once():
    thing = _Thing()
    thing.a, thing.b = 1, 2
    with patch_attributes(thing, a=10, b=20, method=None):
        assert (thing.a, thing.b, thing.method) == (10, 20, None)
    assert (thing.a, thing.b, thing.method()) == (1, 2, "class")


def test_undone_when_the_block_raises():
    thing = _Thing()
    try:
        with patch_attribute(thing, "method", None):
            raise RuntimeError
    except RuntimeError:
        pass
    assert thing.method() == "class"
