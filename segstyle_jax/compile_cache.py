"""XLA's persistent compilation cache, so that a run at a size seen before does not compile again.

Every ``segstyle`` run is a fresh process, and compiling one scale's update step takes 3-14 s of
XLA on the 2-core benchmark CPU (README "Speed") before the first step. JAX can keep compiled
programs on disk (``jax_compilation_cache_dir``); :func:`enable` points it at
:func:`default_dir`. A step is keyed by its program, which depends only on what fixes compiled
shapes (:class:`segstyle_jax.config.StepConfig`: approach, size, segments, taps, optimizer, and the
convolution algorithm) and on the jax/jaxlib version, device and compile options; photos, styles,
masks, loss weights and the VGG weights are arguments of the step
(:func:`segstyle_jax.engine.make_update_fn`), so another photo of the same height and width
(after resizing to ``--size``) hits the cache.
An entry is about 0.2 MB. A hit still traces and lowers the program (about 1.5 s for a 256 px
step); the update steps themselves are also kept, serialized, in the ``steps`` folder
(:mod:`segstyle_jax.step_store`, CPU), keyed by what they are made from, and load without tracing.

The ``segstyle`` command enables it (``--compile-cache DIR`` or ``off``; the environment variable
:data:`ENV_VAR` sets the default the same way); the Python API leaves JAX's configuration alone
unless :func:`enable` is called. JAX writes an entry in place; an entry cut short (a killed
process) is read as a miss, with a warning, and compiled again.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import jax

ENV_VAR = "SEGSTYLE_JAX_COMPILE_CACHE"  # a directory, or "off"
OFF = ("off", "0", "none", "")
MIN_COMPILE_SECONDS = 0.5  # programs that compile faster are not worth a file


def default_dir() -> Path | None:
    """``$SEGSTYLE_JAX_COMPILE_CACHE`` (``None`` when it is ``off``), else
    ``$XDG_CACHE_HOME/segstyle_jax/xla``, else ``~/.cache/segstyle_jax/xla``."""
    if ENV_VAR in os.environ:
        value = os.environ[ENV_VAR]
        return None if value.strip().lower() in OFF else Path(value)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "segstyle_jax" / "xla"


def resolve(setting: str | None) -> Path | None:
    """The directory a ``--compile-cache`` setting names: ``None`` (not given) -> :func:`default_dir`;
    ``off`` (or ``0``, ``none``, empty) -> ``None``; anything else is the directory."""
    if setting is None:
        return default_dir()
    return None if setting.strip().lower() in OFF else Path(setting)


def enable(path: str | os.PathLike | None = None) -> Path:
    """Keep compiled programs in ``path`` (default :func:`default_dir`; created if missing) for this
    process and later ones. Returns the directory. Raises ``ValueError`` when ``path`` exists and
    is not a directory, or when no directory is given and the default is ``off``."""
    if path is None:
        path = default_dir()
        if path is None:
            raise ValueError(f"the compile cache is off (${ENV_VAR}); give a directory")
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"compile cache {path} exists and is not a directory")
    path.mkdir(parents=True, exist_ok=True)
    global _listening
    if not _listening:
        jax.monitoring.register_event_listener(_on_event)
        jax.monitoring.register_event_duration_secs_listener(_on_duration)
        _listening = True
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


_counts = {"loaded": 0, "stored": 0, "seconds_saved": 0.0}
_listening = False
_this_thread = threading.local()  # .loaded: programs this thread loaded (JAX calls listeners in the compiling thread)


def _on_event(event: str, **_) -> None:
    if event == "/jax/compilation_cache/cache_hits":
        _counts["loaded"] += 1
        _this_thread.loaded = getattr(_this_thread, "loaded", 0) + 1
    elif event == "/jax/compilation_cache/cache_misses":  # JAX records it as it writes the new entry
        _counts["stored"] += 1


def _on_duration(event: str, seconds: float, **_) -> None:
    if event == "/jax/compilation_cache/compile_time_saved_sec":
        _counts["seconds_saved"] += seconds


def counts() -> dict:
    """What the cache did in this process since :func:`enable`: ``loaded`` (programs read instead
    of compiled), ``stored`` (compiled and written) and ``seconds_saved`` (their compile time when
    stored, less the time to read them)."""
    return dict(_counts)


def observes_loads() -> bool:
    """Whether this process counts what XLA's cache loads (:func:`enable` was called): without it a
    cache set up through JAX's own configuration loads programs unseen."""
    return _listening


def loaded_in_this_thread() -> int:
    """How many programs this thread has loaded from the cache since :func:`enable` (a compile that
    raised it was a cache hit: :mod:`segstyle_jax.step_store` does not store such an executable)."""
    return getattr(_this_thread, "loaded", 0)


def summary() -> str:
    """One line for the user: where the cache is and what it did (:func:`counts`)."""
    from segstyle_jax import step_store  # (it imports this module)

    c, s = counts(), step_store.counts()
    parts = [f"{s['loaded']} loaded without tracing, {s['stored']} stored"] if s["loaded"] or s["stored"] else []
    parts += [f"{s['refused']} not stored (custom calls)"] if s["refused"] else []
    steps = f"; update steps: {', '.join(parts)}" if parts else ""
    return (f"compile cache {enabled_dir()}: {c['loaded']} program{'s' if c['loaded'] != 1 else ''} loaded ({c['seconds_saved']:.1f} s of compiling "
            f"saved), {c['stored']} compiled and stored{steps}")


def enabled_dir() -> Path | None:
    """The directory this process's compiled programs are kept in, or ``None``."""
    value = jax.config.jax_compilation_cache_dir
    return Path(value) if value else None
