"""The plugin registry: entry-point discovery, lazy loading, in-process plugins.

Listing reads distribution metadata only: it imports neither TensorFlow nor any
plugin module. A plugin's module is imported the first time it is used; a
module that fails to import is remembered, reported on use and in
``lossplug list --load``, and never breaks the other plugins.

Environment variables (read when the registry is first used, or on
:meth:`Registry.refresh`):

``LOSSPLUG_DISABLE``
    comma-separated plugin names (or ``distribution:name``) to ignore.
``LOSSPLUG_DISABLE_AUTOLOAD``
    ``1``/``true``: ignore entry points altogether; only plugins registered
    in-process with :func:`lossplug.register` are available.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.metadata as metadata
import os
import re
import threading
import traceback
from typing import Any

import attrs
import pluggy

from . import failures, hookspecs
from ._version import API_VERSION
from .errors import (
    APIVersionError,
    InvalidSpecError,
    LossplugError,
    PluginConflictError,
    PluginLoadError,
    UnknownPluginError,
)
from .specs import PluginSpec

ENTRY_POINT_GROUP = "lossplug"
DISABLE_ENV = "LOSSPLUG_DISABLE"
AUTOLOAD_ENV = "LOSSPLUG_DISABLE_AUTOLOAD"
IN_PROCESS = "(in-process)"


def normalize_dist_name(name: str) -> str:
    """PEP 503 normalisation, so ``lossplug_center`` and ``lossplug-center`` match."""
    return re.sub(r"[-_.]+", "-", name).lower()


@attrs.define
class PluginEntry:
    """One candidate provider of a loss name, known without importing it."""

    name: str
    distribution: str
    version: str
    target: str  #: ``module`` or ``module:attribute`` of the entry point
    summary: str = ""
    disabled: bool = False
    entry_point: Any = None  #: the importlib.metadata.EntryPoint, None in-process
    obj: Any = None  #: the plugin object once imported (or registered in-process)
    spec: PluginSpec | None = None
    error: LossplugError | None = None
    remembered_ok: bool = False  #: its load-failure memory was cleared in this process

    @property
    def qualified_name(self) -> str:
        return f"{self.distribution}:{self.name}"

    @property
    def loaded(self) -> bool:
        return self.spec is not None

    @property
    def failure_key(self) -> str | None:
        """Key of this entry in the load-failure memory (installed plugins only)."""
        if self.entry_point is None:
            return None
        return failures.key(self.distribution, self.version, self.name)


@attrs.frozen
class PluginStatus:
    """A row of ``lossplug list``."""

    name: str
    distribution: str
    version: str
    description: str
    status: str  #: available, loaded, disabled, conflict, failed
    detail: str = ""


def autoload_disabled() -> bool:
    """Whether ``LOSSPLUG_DISABLE_AUTOLOAD`` tells the registry to ignore entry points."""
    return _truthy(os.environ.get(AUTOLOAD_ENV))


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


class Registry:
    """Maps loss names to plugins; one process-wide instance is :data:`registry`."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._entries: dict[str, list[PluginEntry]] | None = None
        self._in_process: dict[str, PluginEntry] = {}
        self._wrappers: list[Any] = []
        self._replaced: dict[str, list[PluginEntry]] = {}
        self._pm: pluggy.PluginManager | None = None

    # ------------------------------------------------------------ discovery
    def refresh(self) -> None:
        """Forget discovered entry points (not in-process plugins); re-read on next use."""
        with self._lock:
            self._entries = None
            self._replaced.clear()
            self._pm = None
            for entry in self._in_process.values():
                entry.error = None

    def _disabled_names(self) -> set[str]:
        raw = os.environ.get(DISABLE_ENV, "")
        return {part.strip() for part in raw.split(",") if part.strip()}

    def _discover(self) -> dict[str, list[PluginEntry]]:
        with self._lock:
            if self._entries is not None:
                return self._entries
            entries: dict[str, list[PluginEntry]] = {}
            if not _truthy(os.environ.get(AUTOLOAD_ENV)):
                disabled = self._disabled_names()
                seen: set[tuple[str, str]] = set()
                for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
                    dist = getattr(ep, "dist", None)
                    dist_name = dist.metadata["Name"] if dist is not None else "?"
                    key = (ep.name, normalize_dist_name(dist_name))
                    if key in seen:  # one distribution visible twice on sys.path
                        continue
                    seen.add(key)
                    entry = PluginEntry(
                        name=ep.name,
                        distribution=dist_name,
                        version=dist.version if dist is not None else "?",
                        target=ep.value,
                        summary=(dist.metadata.get("Summary") or "") if dist is not None else "",
                        entry_point=ep,
                    )
                    entry.disabled = bool(
                        {ep.name, entry.qualified_name, normalize_dist_name(dist_name)} & disabled
                    )
                    entries.setdefault(ep.name, []).append(entry)
            self._entries = entries
            return entries

    # ------------------------------------------------------------ listing
    def names(self) -> list[str]:
        """Every usable (not disabled) loss name, sorted."""
        discovered = self._discover()
        names = {name for name, cands in discovered.items() if any(not c.disabled for c in cands)}
        return sorted(names | set(self._in_process))

    def statuses(self, load: bool = False) -> list[PluginStatus]:
        """Rows for ``lossplug list``. With ``load=True`` each plugin is imported."""
        rows: list[PluginStatus] = []
        discovered = self._discover()
        remembered = failures.read()
        for name in sorted(set(discovered) | set(self._in_process)):
            candidates = list(discovered.get(name, []))
            if name in self._in_process:
                candidates.append(self._in_process[name])
            active = [c for c in candidates if not c.disabled]
            for cand in candidates:
                status, detail = "available", ""
                if cand.disabled:
                    status, detail = "disabled", f"by {DISABLE_ENV}"
                elif len(active) > 1:
                    others = ", ".join(c.distribution for c in active if c is not cand)
                    status, detail = "conflict", f"also provided by {others}"
                else:
                    if load:
                        with contextlib.suppress(LossplugError):
                            self._load_entry(cand)
                    last = remembered.get(cand.failure_key) if cand.failure_key else None
                    if cand.error is not None:
                        status, detail = "failed", str(cand.error)
                    elif cand.loaded:
                        status = "loaded"
                    elif last is not None:
                        status = "failed"
                        detail = (
                            f"failed to load when last used: {last} (recheck: lossplug list --load)"
                        )
                description = cand.summary
                if cand.spec is not None:
                    description = cand.spec.description
                rows.append(
                    PluginStatus(
                        name=name,
                        distribution=cand.distribution,
                        version=cand.version,
                        description=description,
                        status=status,
                        detail=detail,
                    )
                )
        return rows

    # ------------------------------------------------------------ lookup
    def _candidates(self, name: str) -> tuple[str, list[PluginEntry]]:
        """Resolve ``name`` or ``distribution:name`` to its active candidates."""
        discovered = self._discover()
        wanted_dist = None
        if ":" in name:
            wanted_dist, name = name.split(":", 1)
        candidates = [c for c in discovered.get(name, []) if not c.disabled]
        if name in self._in_process:
            candidates.append(self._in_process[name])
        if wanted_dist is not None:
            candidates = [
                c
                for c in candidates
                if normalize_dist_name(c.distribution) == normalize_dist_name(wanted_dist)
            ]
        return name, candidates

    def entry(self, name: str) -> PluginEntry:
        """The one active entry for ``name``; raises the error a user should see."""
        with self._lock:
            qualified = name
            name, candidates = self._candidates(name)
            if not candidates:
                raise self._unknown(qualified, name)
            if len(candidates) > 1:
                listing = "; ".join(
                    f"{c.distribution} {c.version} ({c.target})" for c in candidates
                )
                picks = " or ".join(repr(c.qualified_name) for c in candidates)
                raise PluginConflictError(
                    f"loss {name!r} is provided by {len(candidates)} distributions: {listing}. "
                    f"Name the one you mean ({picks}), uninstall one of them, or disable "
                    f"one with {DISABLE_ENV}=<distribution>:{name}."
                )
            return candidates[0]

    def disabled_entry(self, name: str) -> PluginEntry | None:
        """The installed entry for ``name`` that ``LOSSPLUG_DISABLE`` disables, if any."""
        name = name.split(":")[-1]
        with self._lock:
            disabled = [c for c in self._discover().get(name, []) if c.disabled]
        return disabled[0] if disabled else None

    def _unknown(self, qualified: str, name: str) -> UnknownPluginError:
        discovered = self._discover()
        disabled = [c for c in discovered.get(name, []) if c.disabled]
        if disabled and ":" not in qualified:
            return UnknownPluginError(
                f"loss plugin {name!r} is installed ({disabled[0].distribution}) but disabled "
                f"by {DISABLE_ENV}={os.environ.get(DISABLE_ENV, '')!r}; remove it from that "
                "variable to use it."
            )
        known = self.names()
        hint = ""
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        if close:
            hint = " Did you mean " + " or ".join(repr(c) for c in close) + "?"
        installed = ", ".join(known) if known else "(none)"
        autoload = ""
        if _truthy(os.environ.get(AUTOLOAD_ENV)):
            autoload = f" Entry points are ignored because {AUTOLOAD_ENV} is set."
        return UnknownPluginError(
            f"unknown loss plugin {qualified!r}.{hint} Installed plugins: {installed}.{autoload} "
            f"Install the distribution that provides it (usually: pip install "
            f"lossplug-{name.replace('_', '-')}) or register it with lossplug.register()."
        )

    def spec(self, name: str) -> PluginSpec:
        """Import the plugin (once) and return its validated spec."""
        entry = self.entry(name)
        self._load_entry(entry)
        assert entry.spec is not None
        return entry.spec

    def _plugin_manager(self) -> pluggy.PluginManager:
        if self._pm is None:
            pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
            pm.add_hookspecs(hookspecs)
            for wrapper in self._wrappers:
                pm.register(wrapper)
            self._pm = pm
        return self._pm

    def _load_entry(self, entry: PluginEntry) -> None:
        try:
            self._load_entry_once(entry)
        except LossplugError as exc:
            if entry.failure_key:
                failures.record(entry.failure_key, str(exc))
            raise
        if entry.failure_key and not entry.remembered_ok:
            failures.forget(entry.failure_key)
            entry.remembered_ok = True

    def _load_entry_once(self, entry: PluginEntry) -> None:
        with self._lock:
            if entry.error is not None:
                raise entry.error
            if (
                entry.spec is not None
                and self._pm is not None
                and self._pm.is_registered(entry.obj)
            ):
                return
            where = (
                f"distribution {entry.distribution} {entry.version}"
                if entry.entry_point is not None
                else "an in-process registration"
            )
            if entry.obj is None:
                try:
                    entry.obj = entry.entry_point.load()
                except Exception as exc:  # a plugin may fail in any way
                    detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
                    entry.error = PluginLoadError(
                        f"loss plugin {entry.name!r} from {where} failed to import "
                        f"({entry.target}): {detail}. Other plugins keep working. Reinstall or "
                        f"fix it (pip install --force-reinstall {entry.distribution}), or "
                        f"disable it with {DISABLE_ENV}={entry.name}."
                    )
                    entry.error.__cause__ = exc
                    raise entry.error from exc
            try:
                entry.spec = self._validate(entry, where)
            except LossplugError as exc:
                entry.error = exc
                raise
            pm = self._plugin_manager()
            try:
                pm.register(entry.obj, name=entry.qualified_name)
                pm.check_pending()
            except (pluggy.PluginValidationError, ValueError) as exc:
                if pm.is_registered(entry.obj):
                    pm.unregister(entry.obj)
                entry.spec = None
                entry.error = PluginLoadError(
                    f"loss plugin {entry.name!r} from {where} does not implement the lossplug "
                    f"hooks correctly: {exc}. Compare its hook functions with "
                    f"lossplug.hookspecs (names and argument names must match)."
                )
                raise entry.error from exc

    def _validate(self, entry: PluginEntry, where: str) -> PluginSpec:
        obj = entry.obj
        spec_impl = getattr(obj, "lossplug_spec", None)
        build_impl = getattr(obj, "build_loss_graph", None)
        if spec_impl is None or build_impl is None:
            missing = "lossplug_spec" if spec_impl is None else "build_loss_graph"
            raise PluginLoadError(
                f"loss plugin {entry.name!r} from {where} has no {missing}() hook "
                f"implementation in {entry.target}; decorate it with @lossplug.hookimpl."
            )
        try:
            spec = spec_impl()
        except LossplugError as exc:
            raise InvalidSpecError(
                f"loss plugin {entry.name!r} from {where}: invalid spec: {exc}"
            ) from exc
        except Exception as exc:
            raise PluginLoadError(
                f"loss plugin {entry.name!r} from {where}: lossplug_spec() raised "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(spec, PluginSpec):
            raise InvalidSpecError(
                f"loss plugin {entry.name!r} from {where}: lossplug_spec() must return a "
                f"lossplug.PluginSpec, got {type(spec).__name__}"
            )
        if spec.api_version != API_VERSION:
            raise APIVersionError(
                f"loss plugin {entry.name!r} from {where} was built for lossplug plugin API "
                f"version {spec.api_version}, but this lossplug implements API version "
                f"{API_VERSION}. Install a release of {entry.distribution} built for API "
                f"version {API_VERSION}, or a lossplug release implementing API version "
                f"{spec.api_version}."
            )
        if spec.name != entry.name:
            raise InvalidSpecError(
                f"loss plugin registered as {entry.name!r} from {where} declares the name "
                f"{spec.name!r} in its spec; the entry-point name and spec.name must match."
            )
        return spec

    def hook_caller(self, name: str) -> Any:
        """A caller of ``build_loss_graph`` reaching only this plugin (and the wrappers).

        The subset is taken at every call, not once: a pluggy subset caller only leaves
        out the plugins registered when it was made, and ``build_loss_graph`` is
        ``firstresult``, so a plugin loaded later would answer for this one.
        """
        entry = self.entry(name)
        self._load_entry(entry)
        return _OnePluginCaller(self, entry.obj)

    # ------------------------------------------------------------ in-process
    def register(self, plugin: Any, *, replace: bool = False) -> PluginSpec:
        """Register a plugin object (module, class or instance) in this process.

        Its name comes from its spec. A name an installed distribution already
        provides is refused unless ``replace=True`` (the in-process plugin
        then wins and the installed one is hidden for this process).
        """
        with self._lock:
            spec_impl = getattr(plugin, "lossplug_spec", None)
            if spec_impl is None:
                raise PluginLoadError(
                    f"{plugin!r} has no lossplug_spec() hook implementation; it is not a loss "
                    "plugin (use lossplug.register_wrapper for wrapper hooks)"
                )
            spec = spec_impl()
            if not isinstance(spec, PluginSpec):
                raise InvalidSpecError(
                    f"{plugin!r}: lossplug_spec() must return a lossplug.PluginSpec, "
                    f"got {type(spec).__name__}"
                )
            name = spec.name
            existing = [c for c in self._discover().get(name, []) if not c.disabled]
            if name in self._in_process:
                existing.append(self._in_process[name])
            if existing and not replace:
                owners = ", ".join(c.distribution for c in existing)
                raise PluginConflictError(
                    f"cannot register loss plugin {name!r}: the name is already provided by "
                    f"{owners}. Pass replace=True to override it in this process, or choose "
                    "another name."
                )
            if replace:
                self._unregister_name(name)
                hidden = [c for c in self._discover().get(name, []) if not c.disabled]
                for cand in hidden:
                    cand.disabled = True
                self._replaced.setdefault(name, []).extend(hidden)
            entry = PluginEntry(
                name=name,
                distribution=IN_PROCESS,
                version="-",
                target=getattr(plugin, "__name__", type(plugin).__name__),
                summary=spec.description,
                obj=plugin,
            )
            self._in_process[name] = entry
            self._load_entry(entry)
            return spec

    def _unregister_name(self, name: str) -> None:
        entry = self._in_process.pop(name, None)
        if entry is not None and self._pm is not None and self._pm.is_registered(entry.obj):
            self._pm.unregister(entry.obj)

    def unregister(self, name: str) -> None:
        """Remove an in-process plugin; installed plugins it replaced come back."""
        with self._lock:
            if name not in self._in_process:
                raise UnknownPluginError(f"no in-process loss plugin named {name!r} to remove")
            self._unregister_name(name)
            for cand in self._replaced.pop(name, []):
                cand.disabled = False

    def register_wrapper(self, wrapper: Any) -> None:
        """Register an object whose ``wrapper=True`` hookimpls see every plugin call."""
        with self._lock:
            self._wrappers.append(wrapper)
            if self._pm is not None:
                self._pm.register(wrapper)

    def unregister_wrapper(self, wrapper: Any) -> None:
        with self._lock:
            self._wrappers.remove(wrapper)
            if self._pm is not None and self._pm.is_registered(wrapper):
                self._pm.unregister(wrapper)


#: The process-wide registry used by ``compile``, ``lossplug.get`` and the CLI.
registry = Registry()


class _OnePluginCaller:
    """``build_loss_graph`` of one plugin object and the registered wrappers."""

    __slots__ = ("_obj", "_registry")

    def __init__(self, registry: Any, obj: Any) -> None:
        self._registry = registry
        self._obj = obj

    def __call__(self, **kwargs: Any) -> Any:
        registry = self._registry
        pm = registry._plugin_manager()
        others = [
            p
            for other_name, p in pm.list_name_plugin()
            if p is not self._obj and other_name is not None and p not in registry._wrappers
        ]
        return pm.subset_hook_caller("build_loss_graph", remove_plugins=others)(**kwargs)
