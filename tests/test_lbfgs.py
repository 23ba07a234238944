"""The compact L-BFGS direction against optax's two-loop recursion, the independent reference."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from segstyle_jax import lbfgs, step_store


def _objective(shape, seed=0):
    """A non-convex objective of an image-shaped array: a random positive definite quadratic plus a
    sine ripple, so that some pairs have ``s . y < 0`` curvature in places and gamma varies."""
    n = int(np.prod(shape))
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, n)).astype(np.float32)
    q = jnp.asarray(a @ a.T / n + 0.1 * np.eye(n, dtype=np.float32))

    def f(x):
        v = x.reshape(-1)
        return 0.5 * v @ (q @ v) + jnp.sum(jnp.sin(3.0 * v))
    return f, jnp.asarray(rng.standard_normal(shape).astype(np.float32))


@pytest.mark.parametrize("memory, shape", [(3, (6, 5, 3)), (5, (2, 4, 4, 3)), (1, (4, 4, 3))])
def test_direction_matches_optax_two_loop(memory, shape):
    """30 steps (the memory wraps around several times); the same parameters fed to both."""
    f, x = _objective(shape)
    ref, ours = optax.scale_by_lbfgs(memory), lbfgs.scale_by_lbfgs_compact(memory)
    s_ref, s_ours = ref.init(x), ours.init(x)
    grad, update_ref, update_ours = jax.jit(jax.grad(f)), jax.jit(ref.update), jax.jit(ours.update)
    worst = 0.0
    for k in range(30):
        g = grad(x)
        d_ref, s_ref = update_ref(g, s_ref, x)
        d_ours, s_ours = update_ours(g, s_ours, x)
        assert d_ours.shape == x.shape and d_ours.dtype == x.dtype
        worst = max(worst, float(jnp.linalg.norm(d_ours - d_ref) / jnp.linalg.norm(d_ref)))
        x = x - 0.3 * d_ref
    assert worst < 1e-5, worst
    # a direction that ignored the memory (gamma g) is far off: the check can tell
    assert float(jnp.linalg.norm(d_ref - g * (d_ref.ravel() @ g.ravel()) / (g.ravel() @ g.ravel()))) > \
        1e-3 * float(jnp.linalg.norm(d_ref))


def test_first_step_and_unchanged_parameters():
    """The first step is ``min(1, 1/|g|) g``; a step from unchanged parameters and gradient adds a pair
    with ``s . y = 0``, which takes no part (optax gives it weight 0) instead of dividing by zero."""
    f, x = _objective((4, 4, 3), seed=1)
    ours, ref = lbfgs.scale_by_lbfgs_compact(4), optax.scale_by_lbfgs(4)
    s_ours, s_ref = ours.init(x), ref.init(x)
    g = jax.grad(f)(x)
    d, s_ours = ours.update(g, s_ours, x)
    np.testing.assert_allclose(d, g * min(1.0, 1.0 / float(jnp.linalg.norm(g))), rtol=1e-6)
    _, s_ref = ref.update(g, s_ref, x)
    x1 = x - 0.2 * d
    g1 = jax.grad(f)(x1)
    for _ in range(2):  # the second time: s = y = 0
        d_ours, s_ours = ours.update(g1, s_ours, x1)
        d_ref, s_ref = ref.update(g1, s_ref, x1)
        assert bool(jnp.all(jnp.isfinite(d_ours)))
        np.testing.assert_allclose(d_ours, d_ref, rtol=1e-5, atol=1e-6)


def test_pair_with_orthogonal_s_and_y_takes_no_part():
    """A pair with ``s . y = 0`` but nonzero ``s`` and ``y`` (here unit vectors along two axes) is left
    out by optax (weight 0), so its inner products with the other pairs must not count either."""
    f, x = _objective((3, 3, 3), seed=3)
    ours, ref = lbfgs.scale_by_lbfgs_compact(4), optax.scale_by_lbfgs(4)
    s_ours, s_ref = ours.init(x), ref.init(x)
    e = np.eye(x.size, dtype=np.float32)
    feeds = [(x, jax.grad(f)(x))]
    x1 = x - 0.2 * feeds[0][1]
    feeds.append((x1, jax.grad(f)(x1)))
    feeds.append((x1 + e[0].reshape(x.shape), feeds[-1][1] + e[1].reshape(x.shape)))  # s = e0, y = e1
    for _ in range(3):
        x2 = feeds[-1][0] - 0.2 * feeds[-1][1]
        feeds.append((x2, jax.grad(f)(x2)))
    for params, g in feeds:
        d_ours, s_ours = ours.update(g, s_ours, params)
        d_ref, s_ref = ref.update(g, s_ref, params)
        np.testing.assert_allclose(d_ours, d_ref, rtol=1e-5, atol=1e-6)


def test_lbfgs_chains_like_optax():
    """``lbfgs(m, linesearch=False)`` steps like ``optax.lbfgs(1.0, m, linesearch=None)``; with the
    line search like ``optax.lbfgs(memory_size=m)`` (the zoom line search takes the same steps)."""
    f, x0 = _objective((5, 4, 3), seed=2)
    for ours, ref, extra in ((lbfgs.lbfgs(3, linesearch=False), optax.lbfgs(1.0, 3, linesearch=None), False),
                             (lbfgs.lbfgs(3), optax.lbfgs(memory_size=3), True)):
        xs = []
        for opt in (ours, ref):
            @jax.jit
            def step(x, state, opt=opt, extra=extra):
                value, g = jax.value_and_grad(f)(x)
                kwargs = {"value": value, "grad": g, "value_fn": f} if extra else {}
                u, state = opt.update(g, state, x, **kwargs)
                return optax.apply_updates(x, u), state

            x, state = x0, opt.init(x0)
            for _ in range(8):
                x, state = step(x, state)
            xs.append(x)
        np.testing.assert_allclose(xs[0], xs[1], rtol=1e-4, atol=1e-5)
        assert float(f(xs[0])) < float(f(x0))


def test_bad_arguments():
    with pytest.raises(ValueError, match="memory_size"):
        lbfgs.scale_by_lbfgs_compact(0)
    with pytest.raises(TypeError, match="one array"):
        lbfgs.scale_by_lbfgs_compact(2).init({"a": jnp.zeros(3)})


def test_update_makes_no_custom_call():
    """No LAPACK call in the compiled update (a stored step with one crashed a fresh process:
    ``step_store.calls_out``), so the steps that use it can be stored."""
    x = jnp.zeros((4, 4, 3))
    opt = lbfgs.scale_by_lbfgs_compact(3)
    compiled = jax.jit(opt.update).lower(x, opt.init(x), x).compile()
    assert not step_store.calls_out(compiled)
