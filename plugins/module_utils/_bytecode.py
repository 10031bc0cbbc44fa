# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetpatch.rollout: a bytecode cache on the host for the collection's code in an AnsiballZ payload. Not a public API.

An AnsiballZ payload is a zip on ``sys.path``: zipimport compiles every file of it from source on every execution (it
never writes bytecode). install() puts a finder first on ``sys.meta_path`` that, for the collection's own modules
(``ansible_collections.fleetpatch.*``) found by a zipimporter, executes code compiled once per source text and kept in
a per-user cache directory. Everything else about the import (spec, ``__file__``, ``__path__``, ``get_source`` and
``get_data`` of the loader) is what the zip importer gives; code from the cache gets the same file name the zip
importer would use, so tracebacks look the same.

Trust model (as Python's ``__pycache__`` and ssh's): the directory must be a real directory (not a symlink) owned by
the effective uid and writable by nobody else, a cache file a regular file owned by the effective uid and readable by
nobody else. Anything else, or any error at all, means a plain import: a module never fails or behaves differently
because of the cache. Standard library only (the cache is there before anything else of the collection loads).

The same file is also the interpreter's startup hook of a fleetpatch module execution: the action plugin puts it into the
task's remote tmp dir as ``sitecustomize.py`` and that directory first on the module's ``PYTHONPATH``
(plugin_utils/_host_startup.py), so ``startup()`` runs when Python starts, before the AnsiballZ wrapper imports
anything from the zip. Its finder caches ansible-core's module_utils from the payload too (``STARTUP_PREFIXES``):
about half of what a module execution costs (a ping: 0.26 s CPU, 0.15 s with the hook) is Python compiling them from
the zip, which the collection's own ``install()`` comes too late for. ``startup()`` takes its directory off
``sys.path`` and ``PYTHONPATH`` (the processes the module starts never see it) and runs the ``sitecustomize`` it
shadows (Debian's, a distribution's), as Python would have. Its file is as trusted as the AnsiballZ file beside it:
same directory, same owner, same permissions fixup for become.

Every execution compiles this module from the zip (twice: zipimport's find_spec compiles to tell the file name), so
it holds only what a warm cache takes: find the spec, read and check the cache file, run the code. A miss (compile,
store: temp file in the directory, ``os.replace``) and the creation of the directory are in ``_bytecode_store``,
imported on a miss only (not ``_io``, which must not be loaded before the cache is in place).
"""

from __future__ import annotations

import hashlib
import marshal
import os
import stat
import sys
import time
import types
import typing as t
import zipimport

__all__ = ["CACHE_DIR_ENV", "CACHE_ENV", "DIGEST_SIZE", "FORMAT", "HEADER", "STARTUP_PREFIXES", "cache_dir", "cache_name", "install", "startup"]

CACHE_ENV = "FLEETPATCH_BYTECODE_CACHE"  # "off" disables the cache
CACHE_DIR_ENV = "FLEETPATCH_BYTECODE_CACHE_DIR"
FORMAT = b"fleetpatch-bytecode-1"  # bump when the file layout or the key changes
PREFIX = "ansible_collections.fleetpatch."
HEADER = b"FPBC" + FORMAT + b"\n"
# what the startup hook's finder takes besides: the payload's ansible-core (the package itself, its module_utils) and
# the collection's parent packages
STARTUP_NAMES = ("ansible", "ansible_collections", "ansible_collections.fleetpatch")
STARTUP_PREFIXES = ("ansible.", PREFIX)
DIGEST_SIZE = 32
REFRESH_AGE = 24 * 3600  # seconds: an entry read whose mtime is older gets it refreshed (the store prunes by mtime)


def cache_dir() -> str:
    """The cache directory: FLEETPATCH_BYTECODE_CACHE_DIR, else ~/.cache/fleetpatch/bytecode of the effective user."""
    configured = os.environ.get(CACHE_DIR_ENV)
    if configured:
        return configured
    import pwd  # only here: the home of the effective user, not $HOME (which become may leave as the caller's)

    return os.path.join(pwd.getpwuid(os.geteuid()).pw_dir, ".cache", "fleetpatch", "bytecode")


def cache_name(source: bytes) -> str:
    """The cache file of a source text for this interpreter: digest of the source, Python cache tag, optimization level."""
    parts = (FORMAT, (sys.implementation.cache_tag or "").encode(), str(sys.flags.optimize).encode(), hashlib.sha256(source).digest())
    return hashlib.sha256(b"\0".join(parts)).hexdigest() + ".bin"


def install() -> None:
    """Put the caching finder first on sys.meta_path (once); a no-op when FLEETPATCH_BYTECODE_CACHE=off."""
    if os.environ.get(CACHE_ENV, "").lower() == "off":
        return
    # by a marker, not the class: a second copy of this module (loaded again under another name, or after sys.modules was
    # cleared) must neither add a second finder nor be asked by this one (each would ask the other without end)
    if any(getattr(finder, "fleetpatch_bytecode_cache", False) for finder in sys.meta_path):
        return
    sys.meta_path.insert(0, _Finder())


def startup(directory: str) -> None:
    """The interpreter's startup hook (this file run as ``sitecustomize`` from directory): directory off ``sys.path``
    and ``PYTHONPATH``, the caching finder for the payload's ansible-core and collection code, then the
    ``sitecustomize`` this one shadows."""
    directory = os.path.abspath(directory)
    sys.path[:] = [entry for entry in sys.path if os.path.abspath(entry or os.curdir) != directory]
    inherited = os.environ.get("PYTHONPATH")
    if inherited is not None:
        # the module's own processes (a restart command, the checks) get the PYTHONPATH they would have had
        rest = [entry for entry in inherited.split(os.pathsep) if entry and os.path.abspath(entry) != directory]
        if rest:
            os.environ["PYTHONPATH"] = os.pathsep.join(rest)
        else:
            del os.environ["PYTHONPATH"]
    try:
        if os.environ.get(CACHE_ENV, "").lower() != "off" and not any(getattr(finder, "fleetpatch_bytecode_cache", False) for finder in sys.meta_path):
            sys.meta_path.insert(0, _Finder(prefixes=STARTUP_PREFIXES, names=STARTUP_NAMES))
    except Exception:  # pylint: disable=broad-exception-caught  # no hook is a plain execution, never a failed one
        pass
    _run_shadowed("sitecustomize")


def _run_shadowed(name: str) -> None:
    """Run the module name that the path (without this hook's directory) holds, as the import system would have: errors
    propagate, for Python to report as it reports them without the hook."""
    import importlib.machinery  # pylint: disable=import-outside-toplevel  # loaded already by the import system
    import importlib.util  # pylint: disable=import-outside-toplevel

    spec = importlib.machinery.PathFinder.find_spec(name, sys.path)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    # in sys.modules under the name before it runs (as an import puts it), and it stays there: the import of this
    # file, which is still under way, takes what sys.modules holds for the name when it returns
    sys.modules[name] = module
    spec.loader.exec_module(module)


class _Finder:
    """Meta path finder: the spec of the collection's source files in a zip on the path, with a caching loader.

    It asks the other finders in their order; in place of the path finder's search of zip entries it builds the spec
    itself from the zip's file table (as zipimport's find_spec would: same origin and package path), because zipimport's
    find_spec asks its own get_filename, which compiles the module (Python 3.11): a cache behind it would still pay one
    compile per module. Anything else (a .pyc in the zip, a namespace package, a path entry that is no zip) goes to the path
    finder, whose spec is wrapped when its loader is a zipimporter.
    """

    fleetpatch_bytecode_cache = True

    def __init__(self, prefixes: tuple[str, ...] = (PREFIX,), names: tuple[str, ...] = ()) -> None:
        self.cache = _Cache()
        self.prefixes = prefixes
        self.names = names

    def find_spec(self, fullname: str, path: t.Any = None, target: t.Any = None) -> t.Any:
        if not fullname.startswith(self.prefixes) and fullname not in self.names:
            return None
        import importlib.machinery  # pylint: disable=import-outside-toplevel  # loaded already by the import system

        # the finders in their order; the path finder's part for the zip entries done here
        for finder in sys.meta_path:
            if getattr(finder, "fleetpatch_bytecode_cache", False) or not hasattr(finder, "find_spec"):
                continue
            if finder is importlib.machinery.PathFinder:
                try:
                    spec = self._zip_spec(fullname, path)
                except Exception:  # pylint: disable=broad-exception-caught  # the path finder decides then
                    spec = None
                if spec is not None:
                    return spec
            spec = finder.find_spec(fullname, path, target)
            if spec is None:
                continue
            if isinstance(spec.loader, zipimport.zipimporter) and isinstance(spec.origin, str) and spec.origin.endswith(".py"):
                spec.loader = _Loader(spec.loader, self.cache, spec.origin)
            return spec
        return None

    def _zip_spec(self, fullname: str, path: t.Any) -> t.Any:
        """The spec of a .py module or package found in the zip entries of path, None for anything else (a namespace
        package, a .pyc, an entry that is no zip: the path finder's job)."""
        import importlib.util  # pylint: disable=import-outside-toplevel  # loaded already by the import system

        name = fullname.rpartition(".")[2]
        for entry in sys.path if path is None else path:  # None: a top-level name (the payload's ansible package)
            importer = sys.path_importer_cache.get(entry)
            if importer is None and entry not in sys.path_importer_cache:
                importer = sys.path_importer_cache[entry] = zipimport.zipimporter(entry)
            files = getattr(importer, "_files", None)
            if not isinstance(importer, zipimport.zipimporter) or not isinstance(files, dict):
                return None
            base = importer.prefix + name
            for suffix, is_package in ((os.sep + "__init__.pyc", True), (os.sep + "__init__.py", True), (".pyc", False), (".py", False)):
                if base + suffix not in files:
                    continue
                if suffix.endswith(".pyc"):
                    return None
                origin = importer.archive + os.sep + base + suffix
                return importlib.util.spec_from_file_location(fullname, origin, loader=_Loader(importer, self.cache, origin),
                                                              submodule_search_locations=[] if is_package else None)
        return None

    def invalidate_caches(self) -> None:
        """Nothing of its own to invalidate (the other finders are asked by importlib itself)."""


class _Loader:
    """A zipimporter with exec_module running cached code; every other attribute is the zipimporter's."""

    def __init__(self, loader: zipimport.zipimporter, cache: _Cache, origin: str) -> None:
        self._loader = loader
        self._cache = cache
        self._origin = origin

    def __getattr__(self, name: str) -> t.Any:
        return getattr(self._loader, name)

    def get_filename(self, fullname: str) -> str:  # pylint: disable=unused-argument
        """The module's file name in the zip (the zipimporter's get_filename compiles the module to tell it)."""
        return self._origin

    def create_module(self, spec: t.Any) -> None:  # pylint: disable=unused-argument
        """Default module creation, as the zipimporter does."""
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        try:
            code = self._cache.code(self._loader, self._origin)
        except Exception:  # pylint: disable=broad-exception-caught  # any error in the cache path: the plain import
            code = None
        if code is None:
            self._loader.exec_module(module)
            return
        exec(code, module.__dict__)  # pylint: disable=exec-used  # what the zipimporter's exec_module does with its code


class _Cache:
    """Code objects keyed by source digest, Python cache tag and optimization level, in a trusted directory."""

    def __init__(self) -> None:
        self.dir_fd: int | None = None
        self.usable = True
        self.compiled = 0  # compiles done by this process (source not in the cache)
        self.loaded = 0  # code objects taken from the cache

    def code(self, loader: zipimport.zipimporter, origin: str) -> types.CodeType | None:
        """The module's code (from the cache, or compiled and stored), None when the cache is not usable."""
        if not self.usable:
            return None
        source = loader.get_data(origin)
        dir_fd = self.dir_fd if self.dir_fd is not None else self._open_dir()
        if dir_fd is None:
            return None
        name = cache_name(source)
        code = self._read(dir_fd, name)
        if code is not None:
            _fix_filename(code, origin)
            self.loaded += 1
            return code
        # a miss: the store's code is imported now (the plain zip import: its own lookup through this finder comes back
        # here and finds it half-imported, which means the plain import)
        from ansible_collections.fleetpatch.rollout.plugins.module_utils._bytecode_store import compile_and_store

        code = compile_and_store(dir_fd, name, source, origin, header=HEADER)
        self.compiled += 1
        return code

    def _open_dir(self) -> int | None:
        """A descriptor of the trusted cache directory (created 0700 when missing), None when it is not trusted."""
        self.usable = False  # until the directory passed the checks
        path = cache_dir()
        if not os.path.lexists(path):
            from ansible_collections.fleetpatch.rollout.plugins.module_utils._bytecode_store import make_dir

            make_dir(path)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0))
        info = os.fstat(fd)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
            os.close(fd)
            return None
        self.dir_fd, self.usable = fd, True
        return fd

    def _read(self, dir_fd: int, name: str) -> types.CodeType | None:
        """The cached code object, None when absent, untrusted (owner, mode) or corrupt (it is rewritten then)."""
        try:
            fd = os.open(name, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0), dir_fd=dir_fd)
        except FileNotFoundError:
            return None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
                return None
            data = os.read(fd, info.st_size + 1)
            if time.time() - info.st_mtime > REFRESH_AGE:
                # in use: the store's pruning (_bytecode_store.prune) goes by the mtime; refreshed at most once a day
                try:
                    os.utime(fd)
                except OSError:
                    pass
        finally:
            os.close(fd)
        start = len(HEADER) + DIGEST_SIZE
        if data[:len(HEADER)] != HEADER or hashlib.sha256(data[start:]).digest() != data[len(HEADER):start]:
            return None
        try:
            code = marshal.loads(data[start:])
        except (EOFError, ValueError, TypeError):
            return None
        return code if isinstance(code, types.CodeType) else None


def _fix_filename(code: types.CodeType, filename: str) -> None:
    """Give a cached code object (and those nested in it) the file name of this execution's payload."""
    if code.co_filename == filename:
        return
    import _imp  # pylint: disable=import-outside-toplevel  # what importlib uses for moved .pyc files

    _imp._fix_co_filename(code, filename)  # pylint: disable=protected-access


def _remove_own_bytecode(cached: t.Any) -> None:
    """Remove the bytecode Python just wrote of this file into the task's remote tmp dir (and its ``__pycache__`` when
    empty): under become the module runs as another user than the one who owns the tmp dir and removes it after the
    task, and a directory root made there is one that user cannot empty."""
    if not isinstance(cached, str):
        return
    try:
        os.remove(cached)
        os.rmdir(os.path.dirname(cached))
    except OSError:
        pass


if __name__ == "sitecustomize":  # put on the module's path as its interpreter's startup hook (see the module's doc)
    _remove_own_bytecode(globals().get("__cached__"))
    startup(os.path.dirname(os.path.abspath(__file__)))
