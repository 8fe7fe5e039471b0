"""Helpers shared by the prep tests."""

import copy


def with_field(row, path, value):
    """A copy of `row` with the field at `path` (e.g. ("paraphrases", 2, "bucket")) set, or deleted if value is KeyError."""
    row = copy.deepcopy(row)
    target = row
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return row
