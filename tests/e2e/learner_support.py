"""What the learner e2e tests share: a copy of a server's database with its key, a learner of its own on a
database (the reference that reads the logs once), and deep equality of model bodies (the bandit's state, the
rule statistics and the River models, whose state lives in plain Python objects) to an absolute tolerance."""
from __future__ import annotations

import functools
import pickle
import random
import shutil
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from server.base.catalog import catalog_from_config
from server.base.config import load_config
from server.learn.learner import Learner
from server.store.pseudonym_key import open_pseudonymizer
from server.store.sqlite import open_store
from server.store.writer import Writer

TOLERANCE = 1e-9


def copy_store(db: Path, copy: Path) -> None:
    """Copy database ``db`` (the commits still in its WAL included) and its pseudonym key to ``copy``."""
    with sqlite3.connect(db) as source, sqlite3.connect(copy) as target:
        source.backup(target)
    shutil.copy2(f"{db}.key", f"{copy}.key")  # mode 0600 kept


@contextmanager
def learner_on(db: Path, config_path: Path) -> Iterator[Learner]:
    """A learner of the test's own on database ``db`` with the server's config file, its store and writer
    closed after."""
    config = load_config(str(config_path)).with_server(db_path=str(db))
    store = open_store(db)
    writer = Writer(store)
    writer.start()
    try:
        learner = Learner(store, writer, catalog_from_config(config.raw),
                          open_pseudonymizer(store, config.privacy).pseudonymize)
        try:
            yield learner
        finally:
            learner.close()
    finally:
        writer.stop()
        store.close()


def assert_same(a: Any, b: Any, path: str = "", atol: float = TOLERANCE) -> None:
    """``a`` and ``b`` hold the same values: mappings with the same keys, sequences of the same length, floats
    within ``atol``, objects of the same type with the same attributes (a River model, a random generator by
    its state), anything else equal. Pickled bytes are compared unpickled. ``path`` names the difference."""
    where = path or "<root>"
    if isinstance(a, bytes) and isinstance(b, bytes) and a[:1] == b"\x80":  # a pickle (protocol 2+)
        assert_same(pickle.loads(a), pickle.loads(b), path, atol)
    elif isinstance(a, Mapping):
        assert isinstance(b, Mapping), f"{where}: {type(a).__name__} vs {type(b).__name__}"
        assert set(a) == set(b), f"{where}: keys differ: {sorted(map(str, set(a) ^ set(b)))[:10]}"
        for k in a:
            assert_same(a[k], b[k], f"{path}[{k!r}]", atol)
    elif isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        x, y = np.asarray(a), np.asarray(b)
        assert x.shape == y.shape, f"{where}: shape {x.shape} vs {y.shape}"
        if x.dtype.kind == "f" or y.dtype.kind == "f":
            np.testing.assert_allclose(x, y, rtol=0, atol=atol, err_msg=where)
        else:
            assert np.array_equal(x, y), where
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{where}: {a!r:.200} vs {b!r:.200}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]", atol)
    elif isinstance(a, float) or isinstance(b, float):
        assert isinstance(b, (int, float)) and abs(a - b) <= atol, f"{where}: {a!r} vs {b!r}"
    elif isinstance(a, random.Random):
        assert type(a) is type(b) and a.getstate() == b.getstate(), f"{where}: random state differs"
    elif isinstance(a, functools.partial):
        assert isinstance(b, functools.partial), f"{where}: {a!r} vs {b!r}"
        assert_same((a.func, a.args, a.keywords), (b.func, b.args, b.keywords), path, atol)
    elif isinstance(a, type) or callable(a) and not hasattr(a, "__dict__"):
        assert getattr(a, "__qualname__", repr(a)) == getattr(b, "__qualname__", repr(b)), f"{where}: {a} vs {b}"
    elif hasattr(a, "__dict__") or hasattr(type(a), "__slots__"):
        assert type(a) is type(b), f"{where}: {type(a).__name__} vs {type(b).__name__}"
        for name in _attributes(a) | _attributes(b):
            assert_same(getattr(a, name, None), getattr(b, name, None), f"{path}.{name}", atol)
    else:
        assert a == b, f"{where}: {a!r:.200} vs {b!r:.200}"


def _attributes(obj: Any) -> set[str]:
    names = set(getattr(obj, "__dict__", {}))
    for cls in type(obj).__mro__:
        slots = cls.__dict__.get("__slots__", ())
        names.update((slots,) if isinstance(slots, str) else slots)
    return names - {"__dict__", "__weakref__"}
