"""EDM Euler sampler + linear prediction guider against exact Gaussian denoisers (docs/reference.md §2.4).

For data x₀ ~ N(μ, s²) per element and x_σ = x₀ + σ·ε, the optimal x₀-denoiser is
D(x; σ) = (s²·x + σ²·μ)/(s² + σ²). It is plugged in as the contract's `network_fn` through the inverse
of the v-parameterisation: σ = exp(4·c_noise), x = x_in[..., :4]/c_in, F = (D − c_skip·x)/c_out, so the
whole path (preconditioning, doubled cond/uncond batch, per-frame guidance) is exercised.

μ is read from the concat channels and s from the crossattn token, so the unconditional branch (zeros,
§1.7) is the N(0, s_u²) denoiser. Any guided combination of such denoisers is affine in x:
D_g = a(σ)·x + b(σ) with a = (1−w)·s_u²/(s_u²+σ²) + w·s_c²/(s_c²+σ²), b = w·σ²·μ/(s_c²+σ²). Euler steps
then map the per-element mean m and std d exactly:
  m ← m + (σ' − σ)·((1 − a)·m − b)/σ,   d ← d·(1 + (σ' − σ)(1 − a)/σ)
from m₀ = 0, d₀ = √(1 + σ₀²) (the last step, σ' = 0, gives a·m + b = mean of x̂₀). These closed-form
moments are what the sampler must produce; the sample moments are checked within 5 standard errors
(SE(mean) = d/√n, SE(std) ≈ d/√(2n), n elements per frame).

The guided ODE itself (the N → ∞ limit) is computed by the same recursion on a 20 000-step schedule;
with s_u = s_c = s it has the closed form mean = μ_g·(1 − s/√(s²+σ₀²)), std = s·√((1+σ₀²)/(s²+σ₀²)), μ_g
= w·μ (derivation: D_g is then the exact denoiser of N(μ_g, s²), whose probability-flow ODE is
x_σ − μ_g ∝ √(s² + σ²)). 25 Euler steps under-disperse (std 0.854 instead of 1.0 at s = 1): the test
pins the sampler to the Euler-exact values and separately shows the 1000-step sampler within 0.5% of the ODE.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gcd_jax.diffusion.config import diffusion_config
from gcd_jax.diffusion.denoiser import vscaling_edm_cnoise
from gcd_jax.diffusion.discretization import edm_discretization, guidance_scales
from gcd_jax.diffusion.sampler import sample_latents

B, T, H, W = 8, 14, 16, 16  # n = B·4·H·W = 8192 elements per frame


def gaussian_network_fn(s_base: float):
  """network_fn whose denoiser is exact for N(μ = concat, (s_base + crossattn)²)."""
  def fn(x_in, c_noise, context, y, num_frames):
    del y, num_frames
    sigma = jnp.exp(4.0 * c_noise)[:, None, None, None]
    c_skip, c_out, c_in, _ = (c[:, None, None, None] for c in vscaling_edm_cnoise(sigma[:, 0, 0, 0]))
    x = x_in[..., :4] / c_in
    mu = x_in[..., 4:]
    s = s_base + context[:, 0, :1][:, None, None, :]
    d = (s ** 2 * x + sigma ** 2 * mu) / (s ** 2 + sigma ** 2)
    return (d - c_skip * x) / c_out
  return fn


def make_cond(mu: float, ds: float):
  n = B * T
  return dict(concat=jnp.full((n, H, W, 4), mu, jnp.float32),
              crossattn=jnp.full((n, 1, 4), ds, jnp.float32),
              vector=jnp.zeros((n, 3), jnp.float32))


def uncond_of(cond):
  return dict(cond, concat=jnp.zeros_like(cond['concat']), crossattn=jnp.zeros_like(cond['crossattn']))


def euler_moments(sigmas, w, s_u, s_c, mu):
  """Exact mean/std of the Euler sampler's output for the guided Gaussian denoisers (float64)."""
  m, d = 0.0, math.sqrt(1.0 + float(sigmas[0]) ** 2)
  for i in range(len(sigmas) - 1):
    s, s_next = float(sigmas[i]), float(sigmas[i + 1])
    a = (1 - w) * s_u ** 2 / (s_u ** 2 + s ** 2) + w * s_c ** 2 / (s_c ** 2 + s ** 2)
    b = w * s ** 2 * mu / (s_c ** 2 + s ** 2)
    m = m + (s_next - s) * ((1 - a) * m - b) / s
    d = d * (1 + (s_next - s) * (1 - a) / s)
  return m, abs(d)


def frame_moments(x):
  v = np.asarray(x, np.float64).reshape(B, T, -1).transpose(1, 0, 2).reshape(T, -1)
  return v.mean(1), v.std(1), v.shape[1]


def _run(cfg, cond, uncond, key=0, python_loop=False):
  fn = lambda c, u, k: sample_latents(gaussian_network_fn(0.5), c, u, k, cfg, T, python_loop=python_loop)
  if not python_loop:
    fn = jax.jit(fn)
  return fn(cond, uncond, jax.random.key(key))


def test_unguided_matches_exact_euler_and_ode():
  cfg = diffusion_config()
  mu, s = 2.0, 0.5
  x = _run(cfg, make_cond(mu, 0.0), None)
  m, d, n = frame_moments(x)
  sig = edm_discretization(25)
  m_e, d_e = euler_moments(sig, 1.0, s, s, mu)
  # pooled over the 14 frames: n_all = 14·8192 = 114 688
  n_all = n * T
  print(f'unguided 25 steps: mean {m.mean():.5f} (Euler-exact {m_e:.5f}), std {np.sqrt((d ** 2).mean()):.5f} '
        f'(Euler-exact {d_e:.5f}, ODE {s})')
  assert abs(m.mean() - m_e) < 5 * d_e / math.sqrt(n_all)
  assert abs(np.sqrt((d ** 2).mean()) - d_e) < 5 * d_e / math.sqrt(2 * n_all)
  # The fine schedule approaches the ODE's target N(μ, s²) (σ₀ terms are < 1e-3 relative).
  cfg.sampler.num_steps = 1000
  x = _run(cfg, make_cond(mu, 0.0), None, key=1)
  m, d, _ = frame_moments(x)
  m_e, d_e = euler_moments(edm_discretization(1000), 1.0, s, s, mu)
  m_ode = mu * (1 - s / math.sqrt(s ** 2 + 700.0 ** 2))
  d_ode = s * math.sqrt((1 + 700.0 ** 2) / (s ** 2 + 700.0 ** 2))
  print(f'unguided 1000 steps: mean {m.mean():.5f} std {np.sqrt((d ** 2).mean()):.5f}; Euler-exact '
        f'{m_e:.5f}/{d_e:.5f}; ODE {m_ode:.5f}/{d_ode:.5f}')
  assert abs(d_e - d_ode) < 0.005 * d_ode  # discretisation error at 1000 steps (measured 0.42%)
  assert abs(m.mean() - m_ode) < 5 * d_e / math.sqrt(n_all) + abs(m_e - m_ode)
  assert abs(np.sqrt((d ** 2).mean()) - d_ode) < 5 * d_e / math.sqrt(2 * n_all) + abs(d_e - d_ode)


@pytest.mark.parametrize('ds', [0.0, 0.5])
def test_guided_per_frame_matches_exact(ds):
  """Guidance between N(0, s_u²) (uncond) and N(μ, s_c²) (cond) with per-frame scales 1.0 → 2.5 (the
  preview guider, to make frame differences large). ds = 0: equal stds (closed-form ODE target)."""
  cfg = diffusion_config('preview')
  mu, s_u = 3.0, 0.5
  s_c = s_u + ds
  x = _run(cfg, make_cond(mu, ds), uncond_of(make_cond(mu, ds)), key=2)
  m, d, n = frame_moments(x)
  sig = edm_discretization(25)
  scales = guidance_scales(T, 1.0, 2.5)
  worst = 0.0
  for t in range(T):
    m_e, d_e = euler_moments(sig, float(scales[t]), s_u, s_c, mu)
    z_m = (m[t] - m_e) / (d_e / math.sqrt(n))
    z_d = (d[t] - d_e) / (d_e / math.sqrt(2 * n))
    worst = max(worst, abs(z_m), abs(z_d))
    assert abs(z_m) < 5 and abs(z_d) < 5, (t, m[t], m_e, d[t], d_e)
  print(f'guided (ds={ds}): worst per-frame deviation {worst:.2f} SE; frame 0 mean {m[0]:.4f}, '
        f'frame 13 mean {m[13]:.4f} (ODE targets {scales[0] * mu:.4f}, {scales[13] * mu:.4f})')
  # The guided ODE target for equal stds: N(w·μ, s²) per frame (σ₀ correction included).
  if ds == 0.0:
    fine = edm_discretization(20000)
    for t in (0, 7, 13):
      m_f, d_f = euler_moments(fine, float(scales[t]), s_u, s_c, mu)
      m_ode = scales[t] * mu * (1 - s_u / math.sqrt(s_u ** 2 + 700.0 ** 2))
      assert abs(m_f - m_ode) < 1e-3 and abs(d_f - s_u) < 1e-3 * s_u
      # 25-step Euler keeps the mean exact (the error only shrinks the std)
      m_e, _ = euler_moments(sig, float(scales[t]), s_u, s_c, mu)
      assert abs(m_e - m_ode) < 1e-3


def test_python_loop_agrees_with_jitted():
  cfg = diffusion_config()
  cfg.sampler.num_steps = 8
  cfg.sampler.s_churn = 2.0  # also exercises the churn noise path
  cond = make_cond(1.0, 0.25)
  a = _run(cfg, cond, uncond_of(cond), key=3)
  b = _run(cfg, cond, uncond_of(cond), key=3, python_loop=True)
  diff = float(jnp.max(jnp.abs(a - b)))
  print(f'python loop vs fori_loop: max abs diff {diff:.2e}')
  assert diff < 1e-4
  c = _run(cfg, cond, uncond_of(cond), key=4)
  assert float(jnp.max(jnp.abs(a - c))) > 0.1


def test_churn_gammas():
  from gcd_jax.diffusion.sampler import churn_gammas  # pylint: disable=g-import-not-at-top
  sig = edm_discretization(25)
  np.testing.assert_array_equal(churn_gammas(sig, 0.0, 0.0, float('inf')), 0.0)
  g = churn_gammas(sig, 5.0, 0.05, 50.0)
  assert np.allclose(g[(sig[:-1] >= 0.05) & (sig[:-1] <= 50.0)], 0.2)  # min(5/25, √2 − 1)
  assert np.all(g[(sig[:-1] < 0.05) | (sig[:-1] > 50.0)] == 0.0)
  assert np.allclose(churn_gammas(sig, 100.0, 0.0, float('inf')), math.sqrt(2) - 1)


def test_sharded_equals_unsharded():
  """Rows split over the 8 fake CPU devices give the same samples for the same key."""
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  devs = jax.devices()
  assert len(devs) == 8
  mesh = Mesh(np.asarray(devs), ('data',))
  cfg = diffusion_config()
  cfg.sampler.num_steps = 6
  cond = make_cond(1.0, 0.25)
  unc = uncond_of(cond)
  sh = NamedSharding(mesh, P('data'))
  constrain = lambda a: jax.lax.with_sharding_constraint(a, sh)
  fn = jax.jit(lambda c, u, k: sample_latents(gaussian_network_fn(0.5), c, u, k, cfg, T, constrain=constrain))
  out = fn(jax.device_put(cond, sh), jax.device_put(unc, sh), jax.random.key(5))
  assert out.sharding.is_equivalent_to(sh, out.ndim)
  ref = _run(cfg, cond, unc, key=5)
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5)
