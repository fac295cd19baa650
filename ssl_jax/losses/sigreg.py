r"""SIGReg, LeJEPA's regulariser towards an isotropic Gaussian (Balestriero & LeCun 2025,
"LeJEPA: Provable and Scalable Self-Supervised Learning Without the Heuristics", Sec. 4 and
Algorithm 1; official code rbalestr-lab/lejepa, not available here: every choice below is from
the paper, unverified against that code, and docs/methods.md lists them).

Sketched Isotropic Gaussian Regularisation: embeddings z_n in R^K (n < N) should be distributed
as N(0, I_K). By Cramer-Wold that holds iff every 1-D projection <a, z> with |a| = 1 is N(0, 1),
so SIGReg draws M unit directions a_1..a_M (the "slices") and, on each projection
x_n = <a_m, z_n>, computes the Epps-Pulley goodness-of-fit statistic

    EP_m = N * \int |phi_N(t) - phi(t)|^2 w(t) dt,
    phi_N(t) = (1/N) sum_n exp(i t x_n)   (empirical characteristic function),
    phi(t) = exp(-t^2 / 2)                (N(0, 1)'s),  w(t) = exp(-t^2 / 2)  (Gaussian window),

by the trapezoid rule on [-T, T]; SIGReg is the mean of EP_m over the slices. phi_N(-t) is the
complex conjugate of phi_N(t) and phi is real, so the integrand is even: the integral is twice
the one over [0, T], which is what is computed (same value as a trapezoid over the symmetric
knots, at half the cost). |phi_N - phi|^2 = (mean cos(t x) - phi(t))^2 + (mean sin(t x))^2.

Distributed: the cos/sin means are plain means over the batch axis; under `jax.jit` with a
batch-sharded global array they are means over the GLOBAL batch (the paper's all-reduce of the
empirical characteristic function), and N is the global batch size. The slices come from the
step's rng, which is replicated, so every device projects on the same directions (the paper
seeds a generator with the global step for the same reason).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np


def slice_directions(rng: chex.PRNGKey, dim: int, num_slices: int) -> jax.Array:
  """[dim, num_slices] directions uniform on the unit sphere (normalised Gaussian columns)."""
  if dim < 1 or num_slices < 1:
    raise ValueError(f"SIGReg needs dim >= 1 and num_slices >= 1, got {dim} and {num_slices}.")
  directions = jax.random.normal(rng, (dim, num_slices), jnp.float32)
  return directions / jnp.linalg.norm(directions, axis=0, keepdims=True)


def quadrature(t_max: float, num_knots: int) -> tuple[np.ndarray, np.ndarray]:
  """Knots t_j on [0, t_max] and weights c_j with sum_j c_j f(t_j) ~ \\int_{-T}^{T} f(t) w(t) dt
  for an even f: twice the trapezoid weights of [0, T] times the window w(t) = exp(-t^2/2)."""
  if not t_max > 0 or num_knots < 2:
    raise ValueError(f"SIGReg quadrature needs t_max > 0 and at least 2 knots, got t_max="
                     f"{t_max} and {num_knots} knots.")
  knots = np.linspace(0.0, t_max, num_knots)
  step = t_max / (num_knots - 1)
  trapezoid = np.full(num_knots, step)
  trapezoid[[0, -1]] = step / 2
  return knots.astype(np.float32), (2.0 * trapezoid * np.exp(-knots**2 / 2)).astype(np.float32)


def epps_pulley(projections: jax.Array, *, t_max: float = 3.0,
                num_knots: int = 17) -> jax.Array:
  """Epps-Pulley statistic of every 1-D sample: [..., N, M] -> [..., M] (N samples, axis -2).

  N times the window-weighted squared distance between the empirical characteristic function
  of the N values and exp(-t^2/2), trapezoid rule on [-t_max, t_max] (see the module doc).
  """
  knots, weights = quadrature(t_max, num_knots)
  x = projections.astype(jnp.float32)[..., None] * knots          # [..., N, M, knots]
  cos_mean = jnp.mean(jnp.cos(x), axis=-3)
  sin_mean = jnp.mean(jnp.sin(x), axis=-3)
  gaussian = np.exp(-knots**2 / 2).astype(np.float32)
  squared_distance = jnp.square(cos_mean - gaussian) + jnp.square(sin_mean)
  return projections.shape[-2] * (squared_distance @ weights)


def sigreg(embeddings: jax.Array, rng: chex.PRNGKey, *, num_slices: int = 1024,
           t_max: float = 3.0, num_knots: int = 17) -> jax.Array:
  """SIGReg of [..., N, K] embeddings: Epps-Pulley on `num_slices` random unit directions
  (drawn from `rng`, shared by every leading index), averaged over slices and leading axes.

  For LeJEPA's [V, N, K] projections this is the paper's mean over views of SIGReg(view).
  """
  if embeddings.ndim < 2:
    raise ValueError(f"SIGReg expects embeddings [..., N, K], got shape {embeddings.shape}.")
  directions = slice_directions(rng, embeddings.shape[-1], num_slices)
  projections = embeddings.astype(jnp.float32) @ directions         # [..., N, M]
  return jnp.mean(epps_pulley(projections, t_max=t_max, num_knots=num_knots))
