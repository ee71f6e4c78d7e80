"""Decoded JSON objects that share their repeated strings (an informer's thousands of pods).

``json.loads`` gives every object its own copy of every key and value: 10,000 pods hold 10,000
``"terminationMessagePath"`` keys and 10,000 ``"/dev/termination-log"`` values. A pod the API
server defaulted is about 16 kB of Python objects, half of it such repeats. :class:`StringPool`
rebuilds an object with its keys interned and its short string values taken from a pool, so the
repeats exist once (8 kB a pod, measured on a defaulted Running pod; about 30 us per object).

The pool is bounded: when it holds ``max_values`` strings it starts over (the objects keep the
strings they got; later objects share among themselves again). Values unique to one object (names,
uids, timestamps) cost a pool slot each until then, which is why only short values are pooled.
"""

from __future__ import annotations

import sys
from typing import Any

MAX_VALUE_LENGTH = 64  # longer strings (container ids, messages, tokens) are rarely repeated
MAX_VALUES = 100_000
_ABSENT: Any = object()


class StringPool:
    def __init__(self, max_values: int = MAX_VALUES, max_length: int = MAX_VALUE_LENGTH) -> None:
        self.max_values = max_values
        self.max_length = max_length
        self._values: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._values)

    def share(self, obj: Any, like: Any = None) -> Any:
        """``obj`` rebuilt (dicts and lists are new; nothing else is copied) with interned keys and
        pooled short string values; equal to ``obj``.

        ``like``: an earlier version of the object, already shared. Parts of ``obj`` equal to the
        same parts of ``like`` are taken from ``like`` as they are, compared but not rebuilt: a
        pod whose status was written keeps its spec and most of its metadata."""
        if isinstance(obj, dict):
            intern, share = sys.intern, self.share
            if type(like) is not dict:
                return {intern(k) if type(k) is str else k: share(v) for k, v in obj.items()}
            out: dict[Any, Any] = {}
            for k, v in obj.items():
                out[intern(k) if type(k) is str else k] = self._share_item(v, like.get(k, _ABSENT))
            return out
        if isinstance(obj, list):
            if type(like) is list and like:
                n = len(like)
                return [self._share_item(v, like[i] if i < n else None) for i, v in enumerate(obj)]
            return [self.share(v) for v in obj]
        if type(obj) is str and len(obj) <= self.max_length:
            got = self._values.get(obj)
            if got is not None:
                return got
            if len(self._values) >= self.max_values:
                self._values.clear()
            self._values[obj] = obj
        return obj

    def _share_item(self, v: Any, old: Any) -> Any:
        """``old`` itself when equal to ``v`` (and of its type: 1 is not True), else ``v`` shared."""
        return old if type(old) is type(v) and old == v else self.share(v, old)
