"""Methods by recipe name: the built-in ones, those registered with :func:`register_method`, and
those that installed packages declare in the ``gsparse.methods`` entry-point group::

    # a package's pyproject.toml
    [project.entry-points."gsparse.methods"]
    my_method = "my_package.sparse:MyMethod"

Recipes are validated against this registry, so a registered method works in any recipe.
"""
from __future__ import annotations

import logging
from importlib import metadata

from gsparse.methods.base import SparseMethod

ENTRY_POINT_GROUP = "gsparse.methods"
logger = logging.getLogger("gsparse")

METHODS: dict[str, type[SparseMethod]] = {}
_entry_points_loaded = False


def register_method(name: str, cls: type[SparseMethod], *, replace: bool = False) -> type[SparseMethod]:
    """Make ``cls`` usable as ``method: name`` in recipes; returns ``cls``.

    Raises ``ValueError`` if ``name`` is taken (unless ``replace``) and ``TypeError`` if ``cls`` is
    not a :class:`~gsparse.methods.base.SparseMethod` subclass.
    """
    if not (isinstance(cls, type) and issubclass(cls, SparseMethod)):
        raise TypeError(f"register_method('{name}', ...): expected a subclass of gsparse.methods.SparseMethod, "
                        f"got {cls!r}")
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_method: the name must be a non-empty string, got {name!r}")
    if name in METHODS and METHODS[name] is not cls and not replace:
        raise ValueError(f"a method named '{name}' is already registered ({METHODS[name].__module__}."
                         f"{METHODS[name].__qualname__}); pass replace=True to override it")
    METHODS[name] = cls
    if "name" not in vars(cls):  # a subclass must not report its parent's name
        cls.name = name
    return cls


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry_point.name in METHODS:
            continue
        try:
            register_method(entry_point.name, entry_point.load())
        except Exception as error:  # a broken plug-in must not break the built-in methods
            logger.warning("gsparse: cannot load method '%s' from entry point %s: %s", entry_point.name,
                           entry_point.value, error)


def available_methods() -> dict[str, type[SparseMethod]]:
    """Every method a recipe may name (built-in, registered, and from entry points)."""
    _load_entry_points()
    return METHODS


def get_method(name: str) -> type[SparseMethod]:
    methods = available_methods()
    if name not in methods:
        raise KeyError(name)
    return methods[name]
