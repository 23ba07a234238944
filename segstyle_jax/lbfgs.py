"""The L-BFGS direction by its compact representation: the same direction as ``optax.scale_by_lbfgs``,
from two matrix products over the stored pairs instead of ``2m`` sequential vector updates.

``optax.scale_by_lbfgs`` computes ``P_k g`` (``P_k`` the L-BFGS approximation of the inverse Hessian,
``g`` the gradient) with the two-loop recursion: ``2m`` scan steps, each slicing one stored pair out
of the memory and reading and writing the image-sized running vector, one pair at a time.
At 256x256 with ``m = 20`` pairs (31 MB of memory) that cost 7.5-9.0 ms a step on the 2-core benchmark
CPU against Adam's 0.5 ms, 2-3% of the whole update step. The compact representation (Byrd, Nocedal and
Schnabel 1994, "Representations of quasi-Newton matrices and their use in limited memory methods",
eq. 3.5 / Theorem 2.2) gives the same matrix from ``m x m`` inner products:

    P = gamma I + [S  Y] [[R^-T (D + gamma Y^T Y) R^-1, -R^-T], [-R^-1, 0]] [S^T; gamma Y^T]

with ``S = [s_1 .. s_m]``, ``Y = [y_1 .. y_m]`` the pairs oldest first (``s_i = x_{i+1} - x_i``,
``y_i = g_{i+1} - g_i``), ``R`` the upper triangle of ``S^T Y`` (``R_ij = s_i . y_j``, ``i <= j``) and
``D`` its diagonal. With ``a = S^T g``, ``b = Y^T g`` and ``r = R^-1 a``:

    P g = gamma g + S p - gamma Y r,    p = R^-T ((D + gamma Y^T Y) r - gamma b).

:func:`scale_by_lbfgs_compact` keeps ``S^T Y`` and ``Y^T Y`` in its state and updates one row and
column of each per step, so a step reads the memory twice: once for ``[S; Y] [s, y, g]`` (the new
pair's inner products and ``a``, ``b``), once for ``[S; Y]^T [p; -gamma r]``; the rest is ``m x m``.
Measured alone in a jitted update with the state donated (256x256x3, median of 80 steps, three runs):
5.2-5.8 ms a step with ``m = 20`` against optax's 7.5-9.0 ms, 2.8-4.3 against 4.4-5.0 with ``m = 10``.
In the whole 256 px locality step (0.32-0.33 s) that is within the spread between runs: two runs of
60 steps each, alternating, gave 0.328 against 0.334 s and 0.318 against 0.318 s.

It follows ``optax.scale_by_lbfgs(memory_size, scale_init_precond=True)`` in everything else: the
first step scales ``g`` by ``min(1, 1 / |g|)``, later ones by ``gamma = (s . y) / (y . y)`` of the
newest pair; a pair with ``s . y = 0`` (the first step's, or an unchanged image) takes no part.
The directions agree to rounding (``tests/test_lbfgs.py``: relative difference < 1e-5 over 30 steps
of a non-convex objective). Its inner products are computed at ``Precision.HIGHEST`` (float32 on a
GPU, where the default for float32 matrix products may be TF32). Measured on the CPU only.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

_HIGHEST = jax.lax.Precision.HIGHEST


class CompactLBFGSState(NamedTuple):
    """``count``: steps taken; ``params``, ``updates``: the previous parameters and gradient (the
    parameters' shape); ``memory`` ``[2m, n]``: rows ``0..m-1`` the ``s`` and ``m..2m-1`` the ``y`` of
    the pairs, in ring-buffer slots (``n`` the parameters' size); ``sty``, ``yty`` ``[m, m]``:
    ``s_i . y_j`` and ``y_i . y_j`` by slot."""

    count: jax.Array
    params: jax.Array
    updates: jax.Array
    memory: jax.Array
    sty: jax.Array
    yty: jax.Array


def _dot(a, b):
    return jnp.matmul(a, b, precision=_HIGHEST)


def _solve_upper(r, c, transpose: bool = False):
    """``x`` with ``r x = c`` (``transpose``: ``r^T x = c``) for an upper triangular ``r`` ``[m, m]``
    with a nonzero diagonal, by substitution: ``m`` steps of ``m`` products, unrolled into
    straight-line code (no while loop in the step).

    Not ``jax.scipy.linalg.solve_triangular``: on the CPU that is a call into LAPACK
    (``lapack_strsm_ffi``) whose function pointer jaxlib sets only when it lowers such an operation,
    so a step loaded from the step store (:mod:`segstyle_jax.step_store`) into a process that had
    lowered none crashed with a segmentation fault on its first run."""
    m = r.shape[0]

    def body(k, x):
        i = k if transpose else m - 1 - k
        row = r[:, i] if transpose else r[i]  # x's entries not solved yet are still 0
        return x.at[i].set((c[i] - jnp.dot(row, x, precision=_HIGHEST)) / r[i, i])

    return jax.lax.fori_loop(0, m, body, jnp.zeros_like(c), unroll=True)


def scale_by_lbfgs_compact(memory_size: int = 10) -> optax.GradientTransformation:
    """``updates -> P_k updates`` (the L-BFGS direction, not negated), as ``optax.scale_by_lbfgs``
    computes it, by the compact representation (module docstring). The parameters must be a single
    array (the image being optimized); ``memory_size`` pairs of its size are kept."""
    if isinstance(memory_size, bool) or not isinstance(memory_size, int) or memory_size < 1:
        raise ValueError(f"memory_size must be a positive integer, got {memory_size!r}")
    m = memory_size

    def check(params):
        if not hasattr(params, "shape"):
            raise TypeError(f"scale_by_lbfgs_compact optimizes one array, got {type(params).__name__}")

    def init(params) -> CompactLBFGSState:
        check(params)
        dtype = jnp.asarray(params).dtype
        return CompactLBFGSState(count=jnp.zeros((), jnp.int32), params=jnp.zeros_like(params),
                                 updates=jnp.zeros_like(params), memory=jnp.zeros((2 * m, params.size), dtype),
                                 sty=jnp.zeros((m, m), dtype), yty=jnp.zeros((m, m), dtype))

    def update(updates, state: CompactLBFGSState, params=None):
        if params is None:
            raise ValueError("scale_by_lbfgs_compact needs the parameters")
        check(params)
        g = updates.reshape(-1)
        first = state.count == 0
        # the newest pair, zero on the first step, goes to slot j (the oldest pair's)
        s = jnp.where(first, 0.0, params.reshape(-1) - state.params.reshape(-1))
        y = jnp.where(first, 0.0, g - state.updates.reshape(-1))
        j = (state.count - 1) % m
        memory = jax.lax.dynamic_update_slice(state.memory, s[None], (j, 0))
        memory = jax.lax.dynamic_update_slice(memory, y[None], (m + j, 0))
        # the first pass: [S; Y] [s, y, g] -> [2m, 3]
        prods = _dot(memory, jnp.stack([s, y, g], axis=1))
        sty = state.sty.at[j, :].set(prods[m:, 0]).at[:, j].set(prods[:m, 1])  # s_j . y_k, s_k . y_j
        yty = state.yty.at[j, :].set(prods[m:, 1]).at[:, j].set(prods[m:, 1])
        # oldest first; pairs with s . y = 0 masked out (R's diagonal 1 there, a and b 0)
        order = (state.count + jnp.arange(m)) % m
        sy, yy = sty[order][:, order], yty[order][:, order]
        a, b = prods[:m, 2][order], prods[m:, 2][order]
        diag = jnp.diagonal(sy)
        valid = diag != 0.0
        both = valid[:, None] & valid[None, :]
        r_mat = jnp.where(both, jnp.triu(sy), 0.0) + jnp.diag(jnp.where(valid, 0.0, 1.0).astype(sy.dtype))
        a, b, diag = (jnp.where(valid, v, 0.0) for v in (a, b, diag))
        yy = jnp.where(both, yy, 0.0)
        yy_new = jnp.vdot(y, y)
        gamma = jnp.where(first, jnp.minimum(1.0, 1.0 / jnp.sqrt(jnp.vdot(g, g))),
                          jnp.where(yy_new > 0.0, jnp.vdot(s, y) / yy_new, 1.0)).astype(g.dtype)
        r = _solve_upper(r_mat, a)
        p = _solve_upper(r_mat, diag * r + gamma * _dot(yy, r) - gamma * b, transpose=True)
        coef = jnp.zeros((2 * m,), g.dtype).at[order].set(p).at[m + order].set(-gamma * r)
        # the second pass: gamma g + S p - gamma Y r
        direction = gamma * g + _dot(coef, memory)
        new_state = CompactLBFGSState(count=state.count + 1, params=params, updates=updates, memory=memory,
                                      sty=sty, yty=yty)
        return direction.reshape(updates.shape).astype(updates.dtype), new_state

    return optax.GradientTransformation(init, update)


def lbfgs(memory_size: int = 10, linesearch: bool = True) -> optax.GradientTransformationExtraArgs:
    """``optax.lbfgs(memory_size=memory_size)`` (its zoom line search, at most 20 evaluations) or,
    without ``linesearch``, ``optax.lbfgs(learning_rate=1.0, memory_size=memory_size, linesearch=None)``
    (the unit step), with the direction of :func:`scale_by_lbfgs_compact`."""
    search = optax.scale_by_zoom_linesearch(max_linesearch_steps=20, initial_guess_strategy="one") \
        if linesearch else optax.identity()
    return optax.chain(scale_by_lbfgs_compact(memory_size), optax.scale(-1.0), search)
