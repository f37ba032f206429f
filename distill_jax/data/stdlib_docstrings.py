"""Collects the docstrings of the Python standard library, labelled by module family.

This module imports nothing but the standard library: `StdlibDocstrings` (data/text.py)
runs it as a script in a fresh, isolated interpreter (`python -I stdlib_docstrings.py`),
so the collection cannot depend on what the calling process has imported or patched, and
the ~120 modules it imports never load into the trainer. It prints one JSON list of
`[qualified_name, family, docstring]` rows, sorted by qualified name.

What is collected, for every module in `FAMILIES` and its public submodules (no name part
starting with `_`, no `test`/`tests`; a submodule that fails to import, such as
`asyncio.windows_events` on Linux, is skipped):

* the module's docstring (qualified name: the module name);
* each public class and function defined in the module (its `__module__` is the module, or
  a private/C accelerator module like `_io` or `posix` whose objects the module exposes),
  each object once (the first module in `FAMILIES` order that exposes it);
* each public method, class/static method and property of those classes;

keeping docstrings of at least `MIN_WORDS` whitespace-separated words after
`inspect.cleandoc`. Identical texts are kept once, under their first qualified name in
sorted order (aliases would otherwise leak between splits). Nothing touches the network.

Family mapping (label = index in this order; top-level modules):
"""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import sys
import warnings

MIN_WORDS = 20

FAMILIES: dict[str, tuple[str, ...]] = {
    "email": ("email", "mailbox", "smtplib", "imaplib", "poplib"),
    "http_urllib": ("http", "urllib", "wsgiref", "ftplib", "xmlrpc"),
    "xml": ("xml",),
    "asyncio": ("asyncio",),
    "unittest": ("unittest", "doctest"),
    "concurrency": ("multiprocessing", "concurrent", "threading", "queue", "subprocess", "sched"),
    "logging": ("logging",),
    "files": ("os", "pathlib", "shutil", "glob", "fnmatch", "tempfile", "filecmp", "io"),
    "archives": ("zipfile", "tarfile", "gzip", "bz2", "lzma", "zlib", "zipimport"),
    "text": ("string", "re", "textwrap", "difflib", "unicodedata", "codecs"),
    "numbers_dates": (
        "decimal",
        "fractions",
        "math",
        "cmath",
        "statistics",
        "random",
        "numbers",
        "datetime",
        "calendar",
        "time",
        "zoneinfo",
    ),
    "serialization": (
        "json",
        "pickle",
        "copyreg",
        "shelve",
        "marshal",
        "csv",
        "configparser",
        "plistlib",
    ),
    "language": (
        "ast",
        "dis",
        "inspect",
        "tokenize",
        "symtable",
        "importlib",
        "pkgutil",
        "typing",
        "types",
    ),
    "cli_debug": (
        "argparse",
        "optparse",
        "getopt",
        "cmd",
        "pdb",
        "bdb",
        "trace",
        "traceback",
        "pydoc",
    ),
    "network": ("socket", "ssl", "selectors", "socketserver", "ipaddress", "select"),
    "data_structures": (
        "collections",
        "heapq",
        "bisect",
        "array",
        "enum",
        "dataclasses",
        "functools",
        "itertools",
        "operator",
        "copy",
        "weakref",
        "abc",
    ),
}
"""Label name -> the top-level standard-library modules whose docstrings carry it."""

__doc__ += "\n".join(
    f"    {i:2d} {name:16s} {', '.join(mods)}" for i, (name, mods) in enumerate(FAMILIES.items())
)


def _public(name: str) -> bool:
    return not any(part.startswith("_") or part in ("test", "tests") for part in name.split("."))


def _modules(top: str) -> list:
    """`top` and its public submodules, imported in `pkgutil`'s (sorted) order."""
    try:
        module = importlib.import_module(top)
    except Exception:
        return []
    found = [module]
    if hasattr(module, "__path__"):
        for info in pkgutil.walk_packages(module.__path__, top + ".", onerror=lambda _: None):
            if not _public(info.name):
                continue
            try:
                found.append(importlib.import_module(info.name))
            except Exception:  # platform-specific (Windows) or optional-dependency modules
                continue
    return found


def _defined_in(obj, module_name: str) -> bool:
    owner = getattr(obj, "__module__", None) or ""
    return owner == module_name or owner.startswith("_") or owner == "posix"


def collect() -> list[tuple[str, str, str]]:
    """Returns `(qualified_name, family, docstring)` rows, sorted by qualified name."""
    docs: dict[str, tuple[str, str]] = {}
    seen: set[int] = set()

    def add(qualname: str, family: str, obj) -> None:
        doc = getattr(obj, "__doc__", None)
        if isinstance(doc, str):
            doc = inspect.cleandoc(doc)
            if len(doc.split()) >= MIN_WORDS:
                docs.setdefault(qualname, (family, doc))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for family, tops in FAMILIES.items():
            for top in tops:
                for module in _modules(top):
                    add(module.__name__, family, module)
                    for name, obj in sorted(vars(module).items()):
                        if name.startswith("_") or id(obj) in seen:
                            continue
                        if not (inspect.isclass(obj) or inspect.isroutine(obj)):
                            continue
                        if not _defined_in(obj, module.__name__):
                            continue
                        seen.add(id(obj))
                        qualname = f"{module.__name__}.{name}"
                        add(qualname, family, obj)
                        if not inspect.isclass(obj):
                            continue
                        for attr, value in sorted(vars(obj).items()):
                            if attr.startswith("_"):
                                continue
                            if isinstance(value, staticmethod | classmethod):
                                value = value.__func__
                            if inspect.isroutine(value) or isinstance(value, property):
                                add(f"{qualname}.{attr}", family, value)
    rows, texts = [], set()
    for qualname in sorted(docs):
        family, doc = docs[qualname]
        if doc not in texts:
            texts.add(doc)
            rows.append((qualname, family, doc))
    return rows


if __name__ == "__main__":
    json.dump(collect(), sys.stdout)
