"""Per-step speed of the compiled JAX update against the same mathematics in PyTorch, side by side.

    python bench/bench_step.py --quick                       # < 2 minutes on a 2-core CPU
    python bench/bench_step.py --sizes 256 --segments 2 --approaches blended --steps 5
    python bench/bench_step.py --sizes 256 512 --segments 1 2 4 --approaches multipass blended \\
        --optimizers adam lbfgs --steps 10 --jsonl bench.jsonl [--torch-compile] [--breakdown]

For every configuration (image size x segments x approach x optimizer x ``--conv`` x ``--pooling``)
both implementations get the same inputs in one process: the real default VGG16 weights, skimage's
astronaut as the content, hubble_deep_field / brick / coffee / chelsea as the styles of segments
1..4, and K vertical bands (``--masks hbands``: horizontal; ``ellipse``: an ellipse around the
astronaut plus bands) as masks.
Both start from the content image. JAX runs the engine's own ``make_update_fn`` step (with the
convolution algorithm(s) of ``--conv``; the default ``auto`` is what ``stylize`` compiles for a stage
of a few hundred steps), compiled ahead
of time (``update.lower(...).compile()``; that is the compile time, reported apart, as is the first
execution); PyTorch runs ``bench/torch_reference.py``. After ``--warmup`` untimed steps each, the
two take turns, one step at a time, for ``--steps`` timed steps. ``--pooling avg`` runs both with
average pooling (Gatys et al.'s choice for synthesis): a different loss, so its rows compare speed
and memory, not quality.

Reported per configuration (one JSON line each, then a Markdown table):

* ``jax_compile_s`` (lower + compile), ``jax_first_step_s``, ``torch_first_step_s`` (with
  ``--torch-compile`` this holds torch.compile's compilation), target building time for both;
* per-step seconds median/min/max for both and ``ratio`` = JAX median / PyTorch median;
* ``gflop_per_step`` from XLA's cost analysis of the compiled step with direct convolutions: the
  mathematics' count (for L-BFGS XLA counts the line-search loop body once, so it is a lower
  bound), ``torch_gflop_per_eval`` (convolutions and matmuls of one loss + gradient, counted by
  ``torch.utils.flop_counter``) as a cross-check; with ``--conv auto``/``winograd`` also
  ``gflop_per_step_executed``, XLA's count of the step as run (Winograd multiplies less);
* on a GPU XLA hands the convolutions to cuDNN and its cost analysis does not count them, so there
  ``gflop_per_step`` is PyTorch's count and XLA's is kept as ``xla_gflop_per_step``
  (``flop_source`` says which; :func:`set_flop_rates`);
* achieved GFLOP/s of both (``gflop_per_step`` over each one's median step: "effective" rates
  when the step runs by Winograd, which can pass 100%) and the percentage of the
  machine's matmul peak, measured at start-up with float32 numpy, ``jnp`` and torch matmuls
  (``peak_source`` says which was fastest; that one is the peak);
* memory: on CPU the peak process RSS above the level just before a step (after ``malloc_trim``),
  sampled every 2 ms during one extra, untimed step of each framework (``*_step_rss_mb``; see
  :class:`RssSampler`), plus XLA's own buffer plan (``jax_xla_temp_mb``, ``jax_xla_args_mb``); on a
  GPU XLA's plan of the step (arguments + temporaries + outputs, ``jax_step_gpu_mb``) against
  ``torch.cuda.max_memory_allocated`` during one step (``torch_step_gpu_mb``), and JAX's
  ``jax_memory_stats``;
* the losses both computed at the first step (``loss0_rel_diff``: the same mathematics should give
  the same number to float32 rounding) and at the last, and ``image_max_abs_diff`` after the timed
  steps (Adam's early steps are close to ``lr * sign(grad)``, so pixels whose gradient is near 0
  may go different ways: expect drift of order ``lr``, not 1e-6);
* environment in every row: device, CPU model, versions of jax/jaxlib/flax/optax/torch/numpy,
  ``XLA_FLAGS``, thread counts, the load average at the start and end of the row,
  ``*_cpu_util``, CPU seconds per wall second of each framework's timed steps (about the number of
  cores it kept busy), and ``others_cpu_util``, the most CPU other processes took during a timed
  step (in cores, from /proc/stat); ``jax_*_per_step`` and ``torch_*_per_step``, the median per
  timed step of the process's minor page faults, voluntary and involuntary context switches and
  system CPU seconds (``getrusage``: what the threads waited for or the kernel did for them).

On a GPU (JAX's default device a GPU and this torch build able to use it) PyTorch runs there too,
with ``cudnn.benchmark`` on; ``--precision`` sets what float32 convolutions and matrix products may
run as in both (``default``: each framework's own, which differ: TF32 everywhere in JAX, TF32
convolutions but float32 matmuls in PyTorch; ``tf32``; ``fp32``), and the peak is the faster of a
``jnp`` and a torch float32 matmul on the GPU under that setting. Run it there with
``--one-process --malloc glibc`` (the per-row processes and the malloc settings are for the CPU) and
``XLA_PYTHON_CLIENT_MEM_FRACTION`` below 0.5, so that PyTorch has the rest of the GPU's memory.
``--compute-dtype bfloat16`` runs the VGG layers in bfloat16 in both (``StepConfig.compute_dtype``;
PyTorch's VGG converted to bfloat16, the same roundings), the peak then being a bfloat16 matmul's.
``--multipass-grams batched`` computes the JAX multipass step's Grams as one batched product per tap
instead of one per image (``StepConfig.multipass_grams``; PyTorch's step is unchanged).
``--table ROWS.jsonl`` prints the table of saved rows again.

Run it on an otherwise idle machine. Another busy process is not a small perturbation here: on a
2-core machine with one core taken, PyTorch's two OpenMP threads keep waiting for each other at every
parallel region (measured: 2.0 s per 128 px step instead of 0.13 s, CPU util 1.0; one thread: 0.22 s),
while XLA's work-stealing thread pool barely slows down. A PyTorch CPU util well below its thread
count, or ``others_cpu_util`` above ~0.1, marks a row as disturbed. A warning is
printed when the machine is not idle at start.

Memory allocation is the same for both: by default (``--malloc keep``) the process runs with
``segstyle_jax.host_memory.keep_freed_memory()``, as the ``segstyle`` command does, so neither
framework page-faults its freed buffers in again at every step (both got faster with it: XLA frees
its whole temp buffer after each step, PyTorch its tensors above 32 MB); ``--malloc glibc`` leaves
glibc's malloc as it is. ``keep`` also turns JAX's asynchronous CPU dispatch off, so that the step
runs on the calling thread and its temp buffer comes from the main heap (``host_memory``'s
docstring: steps whose buffer is above 64 MB 5-10% faster, the others alike). ``malloc_keeps_freed_memory`` and
``jax_cpu_async_dispatch`` in every row say which (rows saved before have ``malloc_one_arena``: one
heap for all threads, the setting for large steps then). As in ``stylize()``, a step that needs more
than a quarter of the available memory (XLA's estimate) gives its large blocks back when freed
(``host_memory.before_step``; ``malloc_keeps_large_blocks`` in the row): with both frameworks in
one process, keeping them made a 2048² row run out of memory. Every row runs in a fresh child process of
its own, as a ``segstyle`` run does (the parent measures the peak once and prints the table in its
order): a JAX step measured 10-20% slower when other rows had run before it in the same process
(:func:`process_groups`). ``--one-process`` runs them all in one.

``--breakdown`` also times, for both, taking turns: the VGG forward alone, VGG forward + backward
(no Gram), the style (Gram) part with its gradient from given features, the loss forward, and the
loss with its gradient; the optimizer's share is the step minus the loss with its gradient.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench import torch_reference  # noqa: E402
from segstyle_jax import engine, host_memory, vgg, winograd  # noqa: E402
from segstyle_jax.config import MULTIPASS_GRAMS, LossWeights, StepConfig  # noqa: E402
from segstyle_jax.weights import load_default_weights  # noqa: E402

STYLE_NAMES = ("hubble_deep_field", "brick", "coffee", "chelsea")


# ----------------------------------------------------------------------------------------------
# inputs


def _square(img: np.ndarray, size: int) -> np.ndarray:
    """Centre crop to a square, resize to ``size`` (anti-aliased), float32 RGB in [0, 1]."""
    from skimage.transform import resize

    img = np.asarray(img)
    if img.ndim == 2:
        img = np.stack([img] * 3, -1)
    img = img[..., :3].astype(np.float32) / (255.0 if img.dtype == np.uint8 else 1.0)
    h, w = img.shape[:2]
    s = min(h, w)
    img = img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    return np.clip(resize(img, (size, size), anti_aliasing=True), 0, 1).astype(np.float32)


def make_inputs(size: int, k: int, mask_kind: str):
    import skimage.data

    if k > len(STYLE_NAMES):
        raise SystemExit(f"at most {len(STYLE_NAMES)} segments (one style each), got {k}")
    content = _square(skimage.data.astronaut(), size)
    styles = [_square(getattr(skimage.data, name)(), size) for name in STYLE_NAMES[:k]]
    masks = np.zeros((k, size, size), np.float32)
    yy, xx = np.mgrid[0:size, 0:size]
    if mask_kind == "ellipse" and k > 1:
        person = ((yy - 0.55 * size) / (0.45 * size)) ** 2 + ((xx - 0.42 * size) / (0.28 * size)) ** 2 <= 1
        masks[0] = person
        band = np.minimum(xx * (k - 1) // size, k - 2) + 1
        for i in range(1, k):
            masks[i] = (band == i) & ~person
    else:
        coord = yy if mask_kind == "hbands" else xx
        band = coord * k // size
        for i in range(k):
            masks[i] = band == i
    return content, styles, masks


# ----------------------------------------------------------------------------------------------
# environment and machine peak


def environment() -> dict:
    import flax
    import jaxlib
    import optax

    dev = jax.devices()[0]
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "device": f"{dev.platform}:{getattr(dev, 'device_kind', '')}",
        "jax_devices": len(jax.devices()),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "pid": os.getpid(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
        "xla_compile_options": engine.compiler_options(),
        "malloc_keeps_freed_memory": host_memory.is_applied(),
        "jax_cpu_async_dispatch": bool(jax.config.read("jax_cpu_enable_async_dispatch")),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", ""),
        "GLIBC_TUNABLES": os.environ.get("GLIBC_TUNABLES", ""),
        **gpu_environment(),
        "versions": {"python": platform.python_version(), "jax": jax.__version__, "jaxlib": jaxlib.__version__,
                     "flax": flax.__version__, "optax": optax.__version__, "torch": torch.__version__,
                     "numpy": np.__version__},
    }


def torch_device() -> str:
    """``cuda`` when JAX runs on a GPU and this torch build sees one, else ``cpu``: both
    frameworks on the same kind of device."""
    return "cuda" if jax.devices()[0].platform == "gpu" and torch.cuda.is_available() else "cpu"


# --precision: what float32 convolutions and matrix products may run as, in both frameworks.
# "default" leaves each framework's own default: on NVIDIA GPUs since Ampere, JAX runs float32
# convolutions and dots as TF32 (lax.Precision.DEFAULT) and PyTorch its convolutions as TF32
# (cudnn.allow_tf32) but its matrix products in full float32. On CPU all three are float32.
PRECISIONS = ("default", "tf32", "fp32")


def set_precision(precision: str) -> None:
    """Apply ``--precision`` to both frameworks (before anything is traced)."""
    if precision == "default":
        return
    tf32 = precision == "tf32"
    jax.config.update("jax_default_matmul_precision", "tensorfloat32" if tf32 else "float32")
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def gpu_environment() -> dict:
    """Device-side settings of both frameworks, recorded in every row (on CPU: the torch device only)."""
    env = {"torch_device": torch_device(),
           "jax_default_matmul_precision": str(getattr(jax.config, "jax_default_matmul_precision", None))}
    if env["torch_device"] == "cuda":
        env.update({
            "gpu": torch.cuda.get_device_name(0),
            "torch_cuda": torch.version.cuda,
            "torch_cudnn": torch.backends.cudnn.version(),
            "torch_cudnn_benchmark": torch.backends.cudnn.benchmark,
            "torch_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "torch_cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "XLA_PYTHON_CLIENT_MEM_FRACTION": os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", ""),
            "XLA_PYTHON_CLIENT_PREALLOCATE": os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE", ""),
        })
    return env


def machine_busy_pct(seconds: float = 1.0) -> float:
    """Percentage of all CPUs busy during ``seconds`` (from /proc/stat), while this process sleeps."""
    def sample():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + v[4]
        return sum(v[:8]) - idle, sum(v[:8])
    try:
        b0, t0 = sample()
        time.sleep(seconds)
        b1, t1 = sample()
    except (OSError, ValueError):
        return float("nan")
    return 100.0 * (b1 - b0) / max(t1 - t0, 1)


def _best_seconds(fn, reps: int) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure_peak(n: int, reps: int, dtype: str = "float32") -> dict:
    """``n x n`` matmul GFLOP/s in ``dtype`` (``--compute-dtype``) with numpy (float32 only), jnp
    and torch (on the GPU: jnp and torch there, under ``--precision``); the best is the machine peak."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), np.float32), rng.standard_normal((n, n), np.float32)
    flops = 2.0 * n ** 3
    ja, jb = jnp.asarray(a, dtype), jnp.asarray(b, dtype)
    jmm = jax.jit(jnp.matmul)
    device = torch_device()
    tdtype = getattr(torch, dtype)
    ta, tb = torch.from_numpy(a).to(device, tdtype), torch.from_numpy(b).to(device, tdtype)

    def torch_mm():
        ta @ tb
        if device == "cuda":
            torch.cuda.synchronize()

    result = {} if device == "cuda" or dtype != "float32" else {"numpy": flops / _best_seconds(lambda: a @ b, reps) / 1e9}
    result["jnp"] = flops / _best_seconds(lambda: jmm(ja, jb).block_until_ready(), reps) / 1e9
    result["torch"] = flops / _best_seconds(torch_mm, reps) / 1e9
    source = max(result, key=result.get)
    where = f" on {device}" if device == "cuda" else ""
    return {"peak_gflops": result[source], "peak_source": f"{source} {dtype} {n}x{n} matmul{where}",
            "peak_all_gflops": {k: round(v, 1) for k, v in result.items()}}


# ----------------------------------------------------------------------------------------------
# memory


class RssSampler:
    """Peak resident set size of this process during a call, sampled every ``interval`` seconds by
    a background thread that sleeps while nothing is measured.

    Before measuring, freed heap memory is handed back to the OS (``malloc_trim``): otherwise an
    allocator that keeps freed blocks (glibc does, for PyTorch's tensors) hides a step's working
    memory, and the increase reads 0. Memory is measured in a step of its own, never in a timed
    one, since the trim makes the next step fault its pages in again.
    """

    def __init__(self, interval: float = 0.002):
        self.interval, self.page = interval, os.sysconf("SC_PAGE_SIZE")
        self.peak = 0
        self._go, self._stop = threading.Event(), False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        try:
            import ctypes

            self._trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            self._trim = None

    def rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _run(self):
        while True:
            self._go.wait()
            if self._stop:
                return
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def measure(self, fn) -> int:
        """Run ``fn()``; return the peak RSS increase over the level at its start (bytes)."""
        import gc

        gc.collect()
        if self._trim is not None:
            self._trim(0)
        base = self.rss()
        self.peak = base
        self._go.set()
        try:
            fn()
        finally:
            self._go.clear()
        return max(self.peak, self.rss()) - base

    def close(self):
        self._stop = True
        self._go.set()


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _machine_cpu_seconds() -> float:
    """Busy CPU seconds of the whole machine so far (all processes), from /proc/stat; nan elsewhere."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return float("nan")
    return (sum(v) - v[3] - v[4]) / _TICK


_USAGE_FIELDS = {"page_faults": "ru_minflt", "voluntary_switches": "ru_nvcsw", "involuntary_switches": "ru_nivcsw",
                 "sys_s": "ru_stime"}


def _usage() -> dict:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return {name: getattr(r, field) for name, field in _USAGE_FIELDS.items()}


def _timed(fn, cpu: list | None = None, others: list | None = None, usage: list | None = None):
    """``(fn(), wall seconds)``. Appends this process's CPU seconds per wall second to ``cpu`` and
    the other processes' to ``others`` (both in cores kept busy; /proc/stat has 10 ms ticks, so
    ``others`` is coarse for short calls), and to ``usage`` the process's getrusage counts during
    the call (:data:`_USAGE_FIELDS`: minor page faults, voluntary and involuntary context switches
    of all its threads, system CPU seconds)."""
    u0 = _usage() if usage is not None else None
    m0, c0, t0 = _machine_cpu_seconds(), _cpu_seconds(), time.perf_counter()
    out = fn()
    wall = time.perf_counter() - t0
    c1, m1 = _cpu_seconds(), _machine_cpu_seconds()
    if cpu is not None:
        cpu.append((c1 - c0) / wall)
    if others is not None:
        others.append(max(0.0, (m1 - m0) - (c1 - c0)) / wall)
    if usage is not None:
        u1 = _usage()
        usage.append({k: u1[k] - u0[k] for k in u0})
    return out, wall


def usage_medians(prefix: str, usage: list[dict]) -> dict:
    """Per-step medians of :func:`_timed`'s ``usage`` records, as ``{prefix}_{name}_per_step``."""
    return {f"{prefix}_{k}_per_step": statistics.median(u[k] for u in usage) for k in _USAGE_FIELDS} if usage else {}


def _cost(compiled) -> dict:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return dict(cost or {})


def _memory(compiled) -> dict:
    try:
        m = compiled.memory_analysis()
    except Exception:  # not every backend implements it
        return {}
    if m is None:
        return {}
    return {"jax_xla_temp_mb": getattr(m, "temp_size_in_bytes", 0) / 2 ** 20,
            "jax_xla_args_mb": getattr(m, "argument_size_in_bytes", 0) / 2 ** 20,
            "jax_xla_out_mb": getattr(m, "output_size_in_bytes", 0) / 2 ** 20}


def _need_bytes(compiled) -> int | None:
    """XLA's estimate of the step's memory, as :func:`segstyle_jax.engine.compile_update` computes it
    (temporaries, arguments and outputs, less what outputs alias), or ``None``."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # not every backend implements it
        return None
    if m is None:
        return None
    return m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes


def set_flop_rates(row: dict) -> dict:
    """Fill ``row``'s FLOP rates (``jax_gflops``, ``torch_gflops`` and their ``*_pct_peak``) from its
    ``gflop_per_step``, medians and ``peak_gflops``; return ``row``.

    On a GPU, XLA's cost analysis counts no FLOPs in the convolutions it hands to cuDNN (custom
    calls): its count (kept as ``xla_gflop_per_step``) is then the Grams' and the optimizer's
    alone, and ``gflop_per_step`` becomes PyTorch's flop counter's count of one loss + gradient
    (``torch_gflop_per_eval``; on CPU it runs 8-14% above XLA's count of the same step).
    ``flop_source`` says which count a row's rates use."""
    backend = row.get("platform") or row.get("device", "cpu").split(":")[0]
    if backend != "cpu" and "flop_source" not in row and "torch_gflop_per_eval" in row:
        row["xla_gflop_per_step"] = row["gflop_per_step"]
        row["gflop_per_step"] = row["torch_gflop_per_eval"]
        row["flop_source"] = "torch flop counter, one loss + gradient (XLA's GPU count leaves out cuDNN)"
    row.setdefault("flop_source", "XLA cost analysis, direct convolutions")
    flops = row["gflop_per_step"]
    row["jax_gflops"] = flops / row["jax_step_median_s"]
    row["torch_gflops"] = flops / row["torch_step_median_s"]
    row["jax_pct_peak"] = 100 * row["jax_gflops"] / row["peak_gflops"]
    row["torch_pct_peak"] = 100 * row["torch_gflops"] / row["peak_gflops"]
    return row


def _stats(xs):
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)} if xs else \
        {"median": float("nan"), "min": float("nan"), "max": float("nan")}


# ----------------------------------------------------------------------------------------------
# one configuration


def run_config(size, k, approach, optimizer, conv, pooling, args, weights, jparams, env, peak, sampler) -> dict:
    row = {"size": size, "segments": k, "approach": approach, "optimizer": optimizer, "conv": conv,
           "pooling": pooling, "steps": args.steps,
           "masks": args.masks, "torch_compile": args.torch_compile, "precision": args.precision,
           "compute_dtype": args.compute_dtype, "multipass_grams": args.multipass_grams,
           "loadavg_start": os.getloadavg()}
    content, styles, masks = make_inputs(size, k, args.masks)
    cfg = StepConfig(approach, size, size, k, optimizer=optimizer, pooling=pooling, compute_dtype=args.compute_dtype,
                     multipass_grams=args.multipass_grams)
    lw = LossWeights.create(cfg)
    # targets with the direct convolution (one forward pass: it compiles fastest), the step with `conv`
    model, smodel = weights.model(cfg.taps, pooling), weights.model(cfg.style_taps, pooling)
    if approach == "localized":  # take each style from the central half of its image (paper 3.4)
        region = np.zeros((size, size), np.float32)
        region[size // 4:size - size // 4, size // 4:size - size // 4] = 1
        seg = [engine.SegmentStyle(((i, 1.0, region),)) for i in range(k)]
    else:
        seg = [engine.SegmentStyle(((i, 1.0, None),)) for i in range(k)]

    # -- JAX: targets, compile, cost analysis
    t0 = time.perf_counter()
    tg = engine.make_targets(cfg, model, jparams, content, masks, engine.segment_targets(smodel, jparams, styles, seg))
    jax.block_until_ready(tg)
    row["jax_targets_s"] = time.perf_counter() - t0
    init, update = engine.make_update_fn(cfg, weights.model(cfg.taps, pooling, conv=conv), params=jparams)
    x0 = np.broadcast_to(content, (k,) + content.shape).copy() if approach == "multipass" else content
    state = init(x0)
    t0 = time.perf_counter()
    compiled = engine.compile_lowered(update.lower(state, tg, lw))  # as the API compiles it
    row["jax_compile_s"] = time.perf_counter() - t0
    cost = _cost(compiled)
    row["gflop_per_step_executed"] = cost.get("flops", float("nan")) / 1e9
    # The mathematics' FLOPs: XLA's count of the same step with direct convolutions (Winograd does
    # fewer multiplications for the same result; rates below are "effective", on this count).
    backend = jax.devices()[0].platform
    if all(a == "direct" for a in vgg.conv_algorithms(weights.arch, conv, size, size, backend, args.compute_dtype).values()):
        row["gflop_per_step"] = row["gflop_per_step_executed"]
    else:
        _, direct_update = engine.make_update_fn(cfg, model, params=jparams)
        row["gflop_per_step"] = _cost(direct_update.lower(state, tg, lw).compile()).get("flops", float("nan")) / 1e9
    row["gbytes_accessed_per_step"] = cost.get("bytes accessed", float("nan")) / 1e9
    row.update(_memory(compiled))
    # as stylize() does: with keep_freed_memory, keep the large blocks freed between steps only when
    # the step needs at most a quarter of the available memory (host_memory.before_step); otherwise
    # both frameworks' blocks stay in this one process (2048²: killed by the OOM killer at 23.3 GiB)
    row["malloc_keeps_large_blocks"] = host_memory.before_step(_need_bytes(compiled), engine.available_memory_bytes())

    # -- PyTorch: targets
    t0 = time.perf_counter()
    ref = torch_reference.from_step_config(weights, cfg, lw, content, masks, styles, seg, init=x0,
                                           compile=args.torch_compile, device=env["torch_device"])
    row["torch_targets_s"] = time.perf_counter() - t0

    def jax_step():
        nonlocal state
        state, info = compiled(state, tg, lw)
        return float(jax.block_until_ready(info["loss"]))

    evals = {"n": 0}
    closure = ref._closure

    def counted_closure():
        evals["n"] += 1
        return closure()

    ref._closure = counted_closure

    # -- first steps (compile-free for JAX; torch.compile compiles here) and warm-up
    loss_j, row["jax_first_step_s"] = _timed(jax_step)
    loss_t, row["torch_first_step_s"] = _timed(ref.step)
    row["loss0_jax"], row["loss0_torch"] = loss_j, loss_t
    row["loss0_rel_diff"] = abs(loss_j - loss_t) / abs(loss_t)
    for _ in range(args.warmup):
        jax_step()
        ref.step()

    if args.flop_count:
        from torch.utils.flop_counter import FlopCounterMode

        xg = torch_reference._nchw(ref.image).to(ref.device).requires_grad_(True)
        with FlopCounterMode(display=False) as counter:
            ref.loss(xg).backward()
        row["torch_gflop_per_eval"] = counter.get_total_flops() / 1e9

    # -- timed steps, alternating
    jt, tt, jc, tc, busy, ju, tu = [], [], [], [], [], [], []
    evals["n"] = 0
    ls_steps = []
    for _ in range(args.steps):
        loss_j, s = _timed(jax_step, jc, busy, ju)
        jt.append(s)
        if optimizer == "lbfgs":
            import optax

            ls_steps.append(int(optax.tree_utils.tree_get(state.opt_state, "num_linesearch_steps")))
        loss_t, s = _timed(ref.step, tc, busy, tu)
        tt.append(s)
    js, ts = _stats(jt), _stats(tt)
    row.update({f"jax_step_{k_}_s": v for k_, v in js.items()})
    row.update({f"torch_step_{k_}_s": v for k_, v in ts.items()})
    row["ratio"] = js["median"] / ts["median"]
    row["jax_step_times_s"], row["torch_step_times_s"] = jt, tt  # in order: shows warm-up left in the timed steps
    # CPU seconds per wall second during the timed steps: ~ the number of cores kept busy. Far
    # below the thread count means the threads waited (e.g. for a core another process holds).
    row["jax_cpu_util"], row["torch_cpu_util"] = statistics.median(jc), statistics.median(tc)
    row["others_cpu_util"] = max(busy)  # the worst disturbance seen during a timed step, in cores
    # what the process's threads did during a step: page faults, context switches, system time
    row.update(usage_medians("jax", ju))
    row.update(usage_medians("torch", tu))
    row["loss_last_jax"], row["loss_last_torch"] = loss_j, loss_t
    # after the same number of steps from the same start: how far the two images drifted apart
    diff = np.abs(np.asarray(state.image) - ref.image)
    row["image_max_abs_diff"], row["image_mean_abs_diff"] = float(diff.max()), float(diff.mean())
    if optimizer == "lbfgs":
        row["jax_linesearch_steps"] = ls_steps
        row["torch_evals_per_step"] = evals["n"] / max(args.steps, 1)
    row["platform"] = backend
    row.update(peak)
    set_flop_rates(row)
    stats = jax.devices()[0].memory_stats()
    if stats:
        row["jax_memory_stats"] = {k_: stats[k_] for k_ in ("peak_bytes_in_use", "bytes_limit") if k_ in stats}
    if env["torch_device"] == "cuda":
        # device memory: XLA's plan of the compiled step (arguments + temporaries + outputs; the
        # allocator's peak is cumulative over the process) against PyTorch's allocator peak during
        # one step (weights, targets, image and optimizer state included)
        row["jax_mem_source"] = "GPU: XLA plan (args + temp + out)"
        row["jax_step_gpu_mb"] = sum(row.get(f"jax_xla_{k_}_mb", 0.0) for k_ in ("args", "temp", "out"))
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        ref.step()
        row["torch_step_gpu_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
        row["torch_mem_source"] = "GPU: torch.cuda.max_memory_allocated during one step"
    else:
        row["jax_mem_source"] = row["torch_mem_source"] = "process RSS"
        row["jax_step_rss_mb"] = sampler.measure(jax_step) / 2 ** 20  # one more step each, untimed
        row["torch_step_rss_mb"] = sampler.measure(ref.step) / 2 ** 20
    row["process_max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    if args.breakdown:
        # host weights, closed over as constants (the engine's step takes them as arguments; README "Speed")
        row["breakdown"] = breakdown(cfg, weights.model(cfg.taps, pooling, conv=conv), weights.params, tg, lw, ref, x0,
                                     args.breakdown_reps)
    row["loadavg_end"] = os.getloadavg()
    row.update(env)
    return row


# ----------------------------------------------------------------------------------------------
# where the time goes


def _jax_style_term(cfg, feats, tg, lw):
    """The style part of the engine's loss, from features: what the Gram work costs on its own."""
    return jnp.sum(lw.segments * engine.style_terms(cfg, feats, tg, lw))


def breakdown(cfg, model, params, tg, lw, ref, x0, reps: int) -> dict:
    """Median seconds of the step's pieces, JAX and PyTorch taking turns on the same input:

    ``vgg_forward``; ``vgg_forward_backward`` (fixed random cotangents at the taps, no Gram);
    ``style_grad_from_features`` (the Gram / style-error part and its gradient w.r.t. the features,
    without VGG); ``loss_forward``; ``loss_and_grad``. Also the CPU util of each (cores busy).
    """
    loss_fn = engine.multipass_loss if cfg.approach == "multipass" else engine.one_image_loss
    x = jnp.asarray(x0)
    feats = jax.jit(lambda x: model.apply({"params": params}, x))(x)
    style_feats = {t: feats[t] for t in cfg.style_taps}
    rng = np.random.default_rng(0)
    cot = {t: jnp.asarray(rng.standard_normal(f.shape, np.float32)) for t, f in feats.items()}

    def vgg_dot(x):
        f = model.apply({"params": params}, x)
        return sum(jnp.vdot(f[t], cot[t]) for t in f)

    jfns = {
        "vgg_forward": (jax.jit(lambda x: model.apply({"params": params}, x)), x),
        "vgg_forward_backward": (jax.jit(jax.grad(vgg_dot)), x),
        "style_grad_from_features": (jax.jit(jax.value_and_grad(lambda f: _jax_style_term(cfg, f, tg, lw))),
                                     style_feats),
        "loss_forward": (jax.jit(lambda x: loss_fn(cfg, model, x, params, tg, lw)[0]), x),
        "loss_and_grad": (jax.jit(jax.value_and_grad(lambda x: loss_fn(cfg, model, x, params, tg, lw)[0])), x),
    }

    xt = torch_reference._nchw(x0)
    nchw = (lambda a: torch.from_numpy(np.array(a)).permute(0, 3, 1, 2).contiguous()) if np.ndim(x0) == 4 else \
        (lambda a: torch.from_numpy(np.array(a)).permute(2, 0, 1)[None].contiguous())
    tcot = {t: nchw(c) for t, c in cot.items()}
    with torch.no_grad():
        tfeats = {t: f for t, f in ref.vgg(xt).items() if t in cfg.style_taps}

    def t_fwd():
        with torch.no_grad():
            ref.vgg(xt)

    def t_fwd_bwd():
        xg = xt.clone().requires_grad_(True)
        f = ref.vgg(xg)
        torch.autograd.grad(sum((f[t] * tcot[t]).sum() for t in f), xg)

    def t_style():
        f = {t: v.detach().requires_grad_(True) for t, v in tfeats.items()}
        torch.autograd.grad(ref.style_term(f).sum(), list(f.values()))

    def t_loss():
        with torch.no_grad():
            ref._loss(xt)

    def t_loss_grad():
        xg = xt.clone().requires_grad_(True)
        torch.autograd.grad(ref._loss(xg), xg)

    tfns = {"vgg_forward": t_fwd, "vgg_forward_backward": t_fwd_bwd, "style_grad_from_features": t_style,
            "loss_forward": t_loss, "loss_and_grad": t_loss_grad}
    for name, (fn, arg) in jfns.items():  # compile and warm up
        jax.block_until_ready(fn(arg))
        tfns[name]()
    acc = {f"{side}_{name}": ([], []) for name in jfns for side in ("jax", "torch")}
    others = []
    for _ in range(reps):
        for name, (fn, arg) in jfns.items():
            _, s = _timed(lambda: jax.block_until_ready(fn(arg)), acc[f"jax_{name}"][1], others)
            acc[f"jax_{name}"][0].append(s)
            _, s = _timed(tfns[name], acc[f"torch_{name}"][1], others)
            acc[f"torch_{name}"][0].append(s)
    out = {"others_cpu_util": max(others)}
    for key, (times, util) in acc.items():
        out[f"{key}_s"] = statistics.median(times)
        out[f"{key}_cpu_util"] = statistics.median(util)
    return out


# ----------------------------------------------------------------------------------------------
# output


def malloc_mode(row) -> str:
    """A row's malloc setting in a few words: ``glibc`` (its defaults), ``kept, sync`` (keep_freed_memory:
    freed memory kept, JAX's CPU dispatch synchronous; ``, large blocks given back`` for a step too
    large to keep them, ``host_memory.before_step``) or, in rows saved before that, ``one heap`` or
    ``arenas`` (kept, asynchronous dispatch, one heap for all threads or per-thread arenas)."""
    if not row.get("malloc_keeps_freed_memory"):
        return "glibc"
    if "malloc_one_arena" in row:
        return "one heap" if row["malloc_one_arena"] else "arenas"
    mode = "kept, sync" if row.get("jax_cpu_async_dispatch") is False else "kept"
    return mode + (", large blocks given back" if row.get("malloc_keeps_large_blocks") is False else "")


def step_memory(row) -> str:
    """The table's memory cell: process RSS increase during a step on CPU; on a GPU, XLA's plan of
    the step against PyTorch's allocator peak (marked ``GPU``)."""
    if "jax_step_gpu_mb" in row:
        return f"GPU {row['jax_step_gpu_mb']:.0f} / {row['torch_step_gpu_mb']:.0f}"
    return f"{row['jax_step_rss_mb']:.0f} / {row['torch_step_rss_mb']:.0f}"


def seconds(v: float) -> str:
    """A step time for the table: three decimals, four below 0.1 s (GPU steps take milliseconds)."""
    return f"{v:.3f}" if v >= 0.1 else f"{v:.4f}"


def conv_cell(row) -> str:
    """The table's conv cell: the algorithm, and the compute dtype where it is not float32."""
    dtype = row.get("compute_dtype", "float32")
    return row["conv"] if dtype == "float32" else f"{row['conv']}, {dtype}"


def markdown(rows) -> str:
    head = ("| size | K | approach | opt | conv | pool | JAX compile s | PyTorch 1st step s | JAX step s med (min-max) "
            "| PyTorch step s med (min-max) "
            "| JAX/PyTorch | GFLOP/step | JAX GFLOP/s (% peak) | PyTorch GFLOP/s (% peak) | step memory MB JAX / PyTorch "
            "| XLA temp MB | CPU util JAX / PyTorch / others | malloc | loss0 rel diff |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| {r['size']} | {r['segments']} | {r['approach']} | {r['optimizer']} | {conv_cell(r)} | {r.get('pooling', 'max')} "
            f"| {r['jax_compile_s']:.1f} "
            f"| {r['torch_first_step_s']:.1f}{' (compile)' if r['torch_compile'] else ''} "
            f"| {seconds(r['jax_step_median_s'])} ({seconds(r['jax_step_min_s'])}-{seconds(r['jax_step_max_s'])}) "
            f"| {seconds(r['torch_step_median_s'])} ({seconds(r['torch_step_min_s'])}-{seconds(r['torch_step_max_s'])}) "
            f"| {r['ratio']:.2f} | {r['gflop_per_step']:.1f} "
            f"| {r['jax_gflops']:.0f} ({r['jax_pct_peak']:.0f}%) | {r['torch_gflops']:.0f} ({r['torch_pct_peak']:.0f}%) "
            f"| {step_memory(r)} | {r.get('jax_xla_temp_mb', float('nan')):.0f} "
            f"| {r['jax_cpu_util']:.2f} / {r['torch_cpu_util']:.2f} / {r['others_cpu_util']:.2f} | {malloc_mode(r)} "
            f"| {r['loss0_rel_diff']:.1e} |")
    return "\n".join(lines)


def breakdown_markdown(rows) -> str:
    rows = [r for r in rows if "breakdown" in r]
    if not rows:
        return ""
    parts = ["vgg_forward", "vgg_forward_backward", "style_grad_from_features", "loss_forward", "loss_and_grad"]
    lines = ["| size | K | approach | part | JAX s | PyTorch s | JAX/PyTorch | CPU util JAX / PyTorch |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        b = r["breakdown"]
        for p in parts:
            j, t = b[f"jax_{p}_s"], b[f"torch_{p}_s"]
            lines.append(f"| {r['size']} | {r['segments']} | {r['approach']} | {p} | {j:.3f} | {t:.3f} | {j / t:.2f} "
                         f"| {b[f'jax_{p}_cpu_util']:.2f} / {b[f'torch_{p}_cpu_util']:.2f} |")
        j = r["jax_step_median_s"] - b["jax_loss_and_grad_s"]
        t = r["torch_step_median_s"] - b["torch_loss_and_grad_s"]
        lines.append(f"| {r['size']} | {r['segments']} | {r['approach']} | step - loss_and_grad (optimizer, clip, "
                     f"checks) | {j:.3f} | {t:.3f} | | others: {b['others_cpu_util']:.2f} (max) |")
    return "\n".join(lines)


def process_groups(args) -> list[tuple[int, list[tuple[int, str]]]]:
    """The rows as ``(size, [(K, approach)])`` groups, one per fresh process: every row (its
    optimizers, convolutions and poolings together) in a process of its own, with the malloc setting
    the ``segstyle`` command runs with.

    One process per row because a row's JAX step measured slower when other rows had run before it
    in the same process (256², K = 4, blended: 0.285-0.293 s a step in a fresh process, alternating
    with PyTorch as here, against 0.315-0.322 s, with single steps up to 0.41, as the eighth row of
    one; 128², K = 2, multipass: 0.115-0.117 against 0.139 s), while PyTorch's hardly moved; a user's
    ``segstyle`` run is one fresh process too."""
    return [(size, [(k, approach)]) for size in args.sizes for k in args.segments for approach in args.approaches]


def run_groups_apart(argv: list[str], args, busy: float, out) -> list[dict]:
    """Run every :func:`process_groups` group in a fresh child process (this script with
    ``--child-size`` and ``--child-rows``), passing the peak measured here; its rows (JSON lines on
    its stdout) are echoed, written to ``out`` if given, as they come, and collected; its stderr
    passes through. Returns the rows in the table's order. A child that fails stops the run."""
    peak = measure_peak(args.peak_n or 4096, reps=5)
    print(f"# peak {peak['peak_gflops']:.0f} GFLOP/s from {peak['peak_source']} {peak['peak_all_gflops']}",
          file=sys.stderr, flush=True)
    rows = []
    for size, pairs in process_groups(args):
        cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--child-size", str(size),
               "--child-rows", json.dumps(pairs), "--child-peak", json.dumps(peak), "--child-busy", str(busy)]
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as child:
            for line in child.stdout:
                if line.startswith("{"):
                    print(line, end="", flush=True)
                    rows.append(json.loads(line))
                    if out:
                        out.write(line)
                        out.flush()
        if child.returncode != 0:
            raise SystemExit(f"the child process for {size} px, (K, approach) {pairs} failed (exit {child.returncode})")
    order = lambda r: (args.sizes.index(r["size"]), args.segments.index(r["segments"]),  # noqa: E731
                       args.approaches.index(r["approach"]))
    return sorted(rows, key=order)  # stable: optimizers, convolutions and poolings keep their order


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="64 and 128 px, K 1 and 2, blended + multipass, adam, 3 steps")
    p.add_argument("--sizes", type=int, nargs="+", default=[256])
    p.add_argument("--segments", type=int, nargs="+", default=[2])
    p.add_argument("--approaches", nargs="+", default=["blended"], choices=torch_reference.APPROACHES)
    p.add_argument("--optimizers", nargs="+", default=["adam"], choices=("adam", "lbfgs", "lbfgs-fixed"))
    p.add_argument("--conv", nargs="+", default=["auto"], choices=winograd.ALGORITHMS,
                   help="JAX convolution algorithm(s) (segstyle_jax/winograd.py); several: one row each")
    p.add_argument("--pooling", nargs="+", default=["max"], choices=("max", "avg"),
                   help="VGG pooling, in both frameworks (default max); several: one row each")
    p.add_argument("--steps", type=int, help="timed steps per implementation (default 5; 3 with --quick)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps after the first one")
    p.add_argument("--masks", default="bands", choices=("bands", "hbands", "ellipse"))
    p.add_argument("--jsonl", type=Path, help="also append the JSON lines to this file")
    p.add_argument("--torch-compile", action="store_true", help="wrap the PyTorch loss in torch.compile")
    p.add_argument("--torch-threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--precision", default="default", choices=PRECISIONS,
                   help="float32 convolutions and matrix products on a GPU, in both frameworks: default (each "
                        "framework's own: TF32 convolutions in both, TF32 dots in JAX, float32 matmuls in "
                        "PyTorch), tf32 or fp32 (full float32 in both); for GPUs (CPUs have no TF32)")
    p.add_argument("--compute-dtype", default="float32", choices=("float32", "bfloat16"),
                   help="what the VGG layers compute in, in both frameworks (StepConfig.compute_dtype; features, "
                        "losses, image and optimizer stay float32); the peak is then a bfloat16 matmul's")
    p.add_argument("--multipass-grams", default="per-image", choices=MULTIPASS_GRAMS,
                   help="how JAX's multipass step computes its K images' Grams (StepConfig.multipass_grams): one "
                        "product per image (default) or one batched product per tap")
    p.add_argument("--peak-n", type=int, help="matrix size of the peak measurement (default 2048 quick, else 4096)")
    p.add_argument("--no-flop-count", dest="flop_count", action="store_false",
                   help="skip the torch FlopCounterMode cross-check")
    p.add_argument("--breakdown", action="store_true", help="also time VGG forward / backward / loss parts")
    p.add_argument("--breakdown-reps", type=int, default=3)
    p.add_argument("--malloc", default="keep", choices=("keep", "glibc"),
                   help="keep: segstyle_jax.host_memory.keep_freed_memory() for both frameworks, as the segstyle "
                        "command runs (freed buffers are reused, not faulted in again every step; JAX's CPU dispatch "
                        "synchronous); glibc: its malloc and JAX's dispatch as they are (default: keep)")
    p.add_argument("--one-process", action="store_true",
                   help="run all rows in this process (default: each row in a fresh child process, as a "
                        "segstyle run is)")
    p.add_argument("--table", type=Path, nargs="+", metavar="JSONL",
                   help="print the Markdown table of rows saved with --jsonl (rates recomputed) and exit")
    p.add_argument("--child-size", type=int, help=argparse.SUPPRESS)   # a child: this size only
    p.add_argument("--child-rows", help=argparse.SUPPRESS)             # a child: these [K, approach] only (JSON)
    p.add_argument("--child-peak", help=argparse.SUPPRESS)             # a child: the parent's peak (JSON)
    p.add_argument("--child-busy", type=float, help=argparse.SUPPRESS)  # a child: the parent's CPU busy % at start
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    if args.table:
        rows = [set_flop_rates(json.loads(line)) for path in args.table for line in path.read_text().splitlines()
                if line.startswith("{")]
        print(markdown(rows))
        return rows
    if args.quick:
        args.sizes, args.segments = [64, 128], [1, 2]
        args.approaches, args.optimizers = ["blended", "multipass"], ["adam"]
        args.steps = args.steps or 3
        args.peak_n = args.peak_n or 2048
    args.steps = args.steps or 5
    child = args.child_size is not None
    if child:
        args.sizes = [args.child_size]
    args.pairs = [tuple(pair) for pair in json.loads(args.child_rows)] if child else \
        [(k, approach) for k in args.segments for approach in args.approaches]
    apart = not child and not args.one_process and len(process_groups(args)) > 1  # rows run in child processes
    # before any JAX or torch work (JAX's CPU client reads its dispatch setting when it starts); as the
    # segstyle command, only for steps on the CPU
    if args.malloc == "keep" and not apart:
        host_memory.keep_freed_memory_for_cpu_steps()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    set_precision(args.precision)
    if torch_device() == "cuda":
        torch.backends.cudnn.benchmark = True  # cuDNN picks its fastest algorithms, as XLA autotunes its own

    t_start = time.perf_counter()
    busy = machine_busy_pct() if not child else args.child_busy
    if busy > 10:
        print(f"# WARNING: the CPU was {busy:.0f}% busy before this benchmark started: other processes compete for "
              f"the cores and distort timings (PyTorch's OpenMP threads most); watch the CPU util columns",
              file=sys.stderr)
    out = open(args.jsonl, "a") if args.jsonl and not child else None
    try:
        if apart:
            rows = run_groups_apart(argv, args, busy, out)
        else:
            rows = run_rows(args, busy, out)
    finally:
        if out:
            out.close()
    if child or not rows:
        return rows
    env = rows[0]
    v, peak = env["versions"], {k: env[k] for k in ("peak_gflops", "peak_source")}
    modes = sorted({malloc_mode(r) for r in rows})
    malloc = f"{', '.join(modes)} (keep_freed_memory: freed memory kept and JAX's CPU dispatch synchronous, or glibc's)"
    tunables = f" | GLIBC_TUNABLES={env['GLIBC_TUNABLES']}" if env.get("GLIBC_TUNABLES") else ""
    print(f"\n{env['device']} | {env['cpu']} | {env['cpu_count']} cpus | torch threads {env['torch_threads']} | "
          f"XLA_FLAGS={env['XLA_FLAGS']!r}, compile options {env['xla_compile_options']}, "
          f"malloc: {malloc}{tunables} | jax {v['jax']} jaxlib {v['jaxlib']} flax {v['flax']} optax {v['optax']} "
          f"torch {v['torch']} | CPU {busy:.0f}% busy before start | peak {peak['peak_gflops']:.0f} GFLOP/s ({peak['peak_source']}) | "
          f"{'each row in a fresh process of its own' if apart else 'one process'} | "
          f"compute dtype {args.compute_dtype} | multipass Grams {args.multipass_grams} | precision {args.precision} (JAX {env['jax_default_matmul_precision']}"
          + (f", torch TF32 matmul {env['torch_matmul_allow_tf32']} / cuDNN {env['torch_cudnn_allow_tf32']}"
             if env["torch_device"] == "cuda" else "") + ") | "
          "step memory: "
          + ("XLA's plan (args + temp + out) / torch.cuda.max_memory_allocated in one step"
             if env["torch_device"] == "cuda" else
             "process RSS increase during one step (sampled, after malloc_trim)") + f" | total {time.perf_counter() - t_start:.0f} s\n")
    print(markdown(rows))
    extra = breakdown_markdown(rows)
    if extra:
        print("\n" + extra)
    return rows


def run_rows(args, busy: float, out) -> list[dict]:
    """Every row of ``args`` in this process -> the rows (each printed as a JSON line, and written to
    ``out`` if given)."""
    env = environment()
    env["cpu_busy_at_start_pct"] = busy
    if args.child_peak:
        peak = json.loads(args.child_peak)
    else:
        peak = measure_peak(args.peak_n or 4096, reps=5, dtype=args.compute_dtype)
        print(f"# {env['device']} ({env['cpu']}, {env['cpu_count']} cpus); peak {peak['peak_gflops']:.0f} GFLOP/s "
              f"from {peak['peak_source']} {peak['peak_all_gflops']}", file=sys.stderr, flush=True)
    weights = load_default_weights()
    jparams = jax.tree.map(jnp.asarray, weights.params)  # on the device once, not per step
    sampler = RssSampler()
    rows = []
    try:
        for size in args.sizes:
            for k, approach in args.pairs:
                for optimizer in args.optimizers:
                    for conv in args.conv:
                        for pooling in args.pooling:
                            row = run_config(size, k, approach, optimizer, conv, pooling, args, weights, jparams,
                                             env, peak, sampler)
                            line = json.dumps(row, default=float)
                            print(line, flush=True)
                            if out:
                                out.write(line + "\n")
                                out.flush()
                            rows.append(row)
    finally:
        sampler.close()
    return rows


if __name__ == "__main__":
    main()
