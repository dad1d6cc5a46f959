"""Searching what a running server holds in memory for traces of a person (the erasure tests)."""
from __future__ import annotations

import asyncio
import gc
import logging
import threading
import types
from collections import deque
from collections.abc import Iterable

_OPAQUE = (types.ModuleType, type, types.FunctionType, types.BuiltinFunctionType, types.CodeType, types.FrameType,
           asyncio.AbstractEventLoop, threading.Thread, logging.Logger)


def _is_module_dict(obj: object) -> bool:
    return isinstance(obj, dict) and "__name__" in obj and "__builtins__" in obj


def traces(roots: Iterable[object], needles: list[str], skip: Iterable[object] = ()) -> list[str]:
    """Every string reachable from ``roots`` (through containers and object attributes, not through modules,
    classes, functions, loggers, threads or event loops) that contains one of ``needles``."""
    seen = {id(o) for o in skip}
    todo = deque(roots)
    found: list[str] = []
    while todo:
        obj = todo.popleft()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, str):
            if any(n in obj for n in needles):
                found.append(obj)
            continue
        if isinstance(obj, (bytes, bytearray, int, float, bool)) or obj is None:
            continue
        if isinstance(obj, _OPAQUE) or _is_module_dict(obj):
            continue
        if isinstance(obj, types.MethodType):
            todo.append(obj.__self__)
            continue
        todo.extend(gc.get_referents(obj))  # attributes, slots, container items
        if isinstance(obj, dict):
            todo.extend(obj.keys())  # the GC does not traverse str keys
    return found
