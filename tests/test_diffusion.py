"""Diffusion objectives and samplers: parity with diffusers schedulers, closed-form checks, CFG, and the config switch.

Layout note: vidjax tensors are channels-last [B, T, H, W, C]; diffusers works on [B, C, T, H, W], so tensors are
moved with ``_to_torch`` / ``_from_torch`` (the schedulers are elementwise, so only the channel split matters).
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vidjax.diffusion import DIFFUSIONS, build_diffusion
from vidjax.diffusion.guidance import caption_drop, guided, normal
from vidjax.diffusion.iddpm import IDDPM, Schedule, space_timesteps
from vidjax.diffusion.rectified_flow import RectifiedFlow, shift_ratio, timestep_transform
from vidjax.diffusion.sit import SiT

SHAPE = (2, 3, 4, 4, 4)  # B, T, H, W, C


def _to_torch(a):
    import torch

    return torch.from_numpy(np.moveaxis(np.asarray(a, np.float64), -1, 1).copy())


def _from_torch(a):
    return np.moveaxis(a.double().numpy(), 1, -1)


def _f64(sched):
    """Run a diffusers scheduler on float64 tables. diffusers builds betas/ᾱ in float32, where 1 − ᾱ_t at small t
    keeps only ~4 digits (its own float32 step then differs from the float64 formula by up to ~3e-5); on float64
    tables its step code can be compared with ours to 1e-6."""
    import torch

    sched.betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    sched.alphas = 1.0 - sched.betas
    sched.alphas_cumprod = torch.cumprod(sched.alphas, 0)
    for name in ("one", "final_alpha_cumprod"):
        if hasattr(sched, name):
            setattr(sched, name, torch.tensor(1.0, dtype=torch.float64))
    return sched


def _randn(seed: int, shape=SHAPE) -> jax.Array:
    """Test data from numpy (an eager rank-5 ``jax.random.normal`` costs ~2 s of XLA compile on CPU)."""
    return jnp.asarray(np.random.RandomState(seed).randn(*shape), jnp.float32)


def _rand_out(seed: int, learned: bool = True):
    rs = np.random.RandomState(seed)
    x = rs.randn(*SHAPE).astype(np.float32)
    eps = rs.randn(*SHAPE).astype(np.float32)
    var = rs.uniform(-1, 1, SHAPE).astype(np.float32)
    return x, (np.concatenate([eps, var], -1) if learned else eps)


# ---------------------------------------------------------------- IDDPM vs diffusers


@pytest.mark.torch
def test_alphas_cumprod_and_posterior_coefs_match_ddpm_scheduler():
    import torch
    from diffusers import DDPMScheduler

    d = IDDPM()
    s32 = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    assert np.abs(s32.alphas_cumprod.double().numpy() - d.schedule.alphas_cumprod).max() <= 1e-6
    assert np.abs(s32.alphas_cumprod.numpy() - np.asarray(d.schedule.f32("alphas_cumprod"))).max() <= 1e-6

    # Posterior q(x_{t-1}|x_t,x0) = N(c1·x0 + c2·x_t, σ²) read off DDPMScheduler.step with prediction_type="sample":
    # c1 = step(x0=1, x_t=0) − step(0, 0), c2 = step(0, 1) − step(0, 0), σ·z = step(0, 0) (same generator seed).
    s = _f64(DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                           prediction_type="sample", variance_type="fixed_small", clip_sample=False))
    one, zero = torch.ones((1, 1), dtype=torch.float64), torch.zeros((1, 1), dtype=torch.float64)

    def step(m, x, t):
        return s.step(m, t, x, generator=torch.Generator().manual_seed(t)).prev_sample.item()

    ts = np.r_[0:20, 20:1000:7, 999]
    c1, c2, var = np.zeros(1000), np.zeros(1000), np.zeros(1000)
    for t in ts:
        base = step(zero, zero, int(t))
        c1[t], c2[t] = step(one, zero, int(t)) - base, step(zero, one, int(t)) - base
        z = torch.randn((1, 1), generator=torch.Generator().manual_seed(int(t)), dtype=torch.float64).item()
        var[t] = (base / z) ** 2
    sch = d.schedule
    assert np.abs(c1 - sch.posterior_mean_coef1)[ts].max() <= 1e-6
    assert np.abs(c2 - sch.posterior_mean_coef2)[ts].max() <= 1e-6
    assert np.abs(var - sch.posterior_variance)[ts].max() <= 1e-6
    for name in ("posterior_mean_coef1", "posterior_mean_coef2", "posterior_variance"):  # as used under jit
        assert np.abs(np.asarray(sch.f32(name)) - getattr(sch, name)).max() <= 1e-6


@pytest.mark.torch
def test_respaced_ddpm_step_matches_ddpm_scheduler():
    """One ancestral step on the 100-step respacing, learned-range variance, same model output and noise."""
    import torch
    from diffusers import DDPMScheduler

    d = IDDPM()
    sp = d.spaced(100)
    assert list(sp.timestep_map[:7]) == [0, 10, 20, 30, 40, 50, 61] and sp.timestep_map[-1] == 999
    s = _f64(DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                           variance_type="learned_range", clip_sample=False))
    s.set_timesteps(timesteps=[int(v) for v in sp.timestep_map[::-1]])  # diffusers respaces the same way
    x, out = _rand_out(0)
    C = SHAPE[-1]
    errs = []
    for i in (99, 50, 1, 0):
        t = int(sp.timestep_map[i])
        z = torch.randn((SHAPE[0], C, *SHAPE[1:4]), generator=torch.Generator().manual_seed(i), dtype=torch.float64)
        ref = _from_torch(s.step(_to_torch(out), t, _to_torch(x), generator=torch.Generator().manual_seed(i))
                          .prev_sample)
        z = jnp.asarray(_from_torch(z), jnp.float32)
        ours = d.ddpm_step(sp, jnp.asarray(out), jnp.asarray(x), jnp.asarray(i), z)
        errs.append(np.abs(np.asarray(ours) - ref).max())
    assert max(errs) <= 1e-6, errs


@pytest.mark.torch
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_step_matches_ddim_scheduler(eta):
    """DDIM on DiT's "ddim100" respacing = diffusers' "leading" 100-step grid (0, 10, …, 990)."""
    import torch
    from diffusers import DDIMScheduler

    d = IDDPM(sampler="ddim", ddim_eta=eta)
    sp = d.schedule.respace("ddim100")
    s = _f64(DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                           clip_sample=False, set_alpha_to_one=True))
    s.set_timesteps(100)
    assert list(s.timesteps.numpy()[::-1]) == list(sp.timestep_map)
    x, out = _rand_out(1)
    errs = []
    for i in (99, 37, 1, 0):
        t = int(sp.timestep_map[i])
        z = torch.randn((SHAPE[0], SHAPE[-1], *SHAPE[1:4]), generator=torch.Generator().manual_seed(i),
                        dtype=torch.float64)
        ref = _from_torch(s.step(_to_torch(out[..., : SHAPE[-1]]), t, _to_torch(x), eta=eta, variance_noise=z)
                          .prev_sample)
        z = jnp.asarray(_from_torch(z), jnp.float32)
        ours = d.ddim_step(sp, jnp.asarray(out), jnp.asarray(x), jnp.asarray(i), z)
        errs.append(np.abs(np.asarray(ours) - ref).max())
    assert max(errs) <= 1e-6, errs


def test_space_timesteps_like_dit():
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    assert space_timesteps(10, "4") == [0, 3, 6, 9]
    assert space_timesteps(300, [10, 15, 20])[:3] == [0, 11, 22]  # DiT's docstring example: per-section strides
    sp = Schedule(np.linspace(1e-4, 0.02, 1000)).respace(100)
    np.testing.assert_allclose(sp.alphas_cumprod, Schedule(np.linspace(1e-4, 0.02, 1000)).alphas_cumprod[
        sp.timestep_map], rtol=1e-12)  # respacing keeps ᾱ at the kept steps


# ---------------------------------------------------------------- rectified flow vs diffusers


@pytest.mark.torch
def test_euler_flow_matches_flow_match_euler_discrete_scheduler():
    """Conventions: diffusers' flow model predicts ε − x0, ours v = x0 − ε (so we feed it −v); both go from
    σ = t/1000 = 1 (noise) to 0 (data) and step x += (σ_next − σ)·v_diffusers. diffusers' default grid is
    linspace(1, 1/1000, N), so we hand it Open-Sora's σ_i = 1 − i/N; its ``shift`` is Open-Sora's ratio r."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler

    rf = RectifiedFlow()
    shape = (2, 15, 4, 6, 4)  # 51 frames → 15 latents, 32×48 px
    steps = 30
    s = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=rf.ratio(shape))
    s.set_timesteps(sigmas=list(1 - np.arange(steps) / steps))
    assert np.abs(s.timesteps.numpy() - np.asarray(rf.timesteps(steps, shape))).max() <= 1e-3  # 1e-6 relative

    rs = np.random.RandomState(0)
    noise = rs.randn(*shape).astype(np.float32)
    gain = jnp.asarray(rs.randn(shape[-1]).astype(np.float32) * 0.3)

    def v_ours(x, t):
        return jnp.tanh(x) * gain + jnp.cos(t / 300.0)[:, None, None, None, None]

    ours = rf.sample(lambda x, t, c, d: v_ours(x, t), jnp.asarray(noise), None, steps=steps, cfg_scale=1.0)
    z = torch.from_numpy(noise)
    for k, t in enumerate(s.timesteps):
        v = -torch.from_numpy(np.array(v_ours(jnp.asarray(z.numpy()), jnp.full((2,), t.item()))))
        z_next = s.step(v, t, z).prev_sample
        if k == 0:  # one Euler step
            t0 = float(rf.timesteps(steps, shape)[0])
            one = np.asarray(noise + v_ours(jnp.asarray(noise), jnp.full((2,), t0)) * (t0 - float(
                rf.timesteps(steps, shape)[1])) / 1000)
            assert np.abs(one - z_next.numpy()).max() <= 1e-6
        z = z_next
    assert np.abs(np.asarray(ours) - z.numpy()).max() <= 5e-6  # 30 float32 steps


def test_timestep_transform_matches_open_sora():
    # Open-Sora v1.2, 720p (720×1280) 4 s = 102 frames: r = sqrt(HW/512²)·sqrt(102//17*5); latents [30, 90, 160]
    r = RectifiedFlow().ratio((1, 30, 90, 160, 4))
    assert r == pytest.approx((720 * 1280 / 512**2) ** 0.5 * (102 // 17 * 5) ** 0.5)
    assert RectifiedFlow().ratio((1, 1, 64, 64, 4)) == pytest.approx(1.0)  # 512² image
    assert RectifiedFlow(transform_hw=(256, 256)).ratio((1, 5, 7, 9, 4)) == pytest.approx(0.5 * 5**0.5)
    assert shift_ratio(1024, 1024, 1) == pytest.approx(2.0)
    t = jnp.array([0.0, 250.0, 500.0, 1000.0])
    np.testing.assert_allclose(timestep_transform(t, 2.0), [0, 400, 2000 / 3, 1000], rtol=1e-6)
    rf = RectifiedFlow(use_timestep_transform=False)
    np.testing.assert_allclose(rf.timesteps(4, (1, 1, 8, 8, 4)), [1000, 750, 500, 250])


# ---------------------------------------------------------------- closed-form checks


def _terms(d: IDDPM, fn, x0, t, noise) -> dict:
    return jax.jit(lambda x0, t, noise: d.loss_terms(fn, x0, t, noise, None, jnp.zeros(len(t), bool)))(x0, t, noise)


def _perfect_x0_model(d: IDDPM, x0: jax.Array, var_value: float):
    """ε̂ recomputed from x_t and the true x0 (so x̂0 = x0 exactly); constant variance value."""
    sab, s1m = d.schedule.f32("sqrt_alphas_cumprod"), d.schedule.f32("sqrt_one_minus_alphas_cumprod")

    def fn(x, t, cond, drop):
        i = t.astype(jnp.int32)[:, None, None, None, None]
        eps = (x - sab[i] * x0) / s1m[i]
        return jnp.concatenate([eps, jnp.full_like(x, var_value)], -1)

    return fn


def test_vlb_vanishes_for_perfect_x0_predictor():
    d = IDDPM()
    x0 = jnp.asarray(np.random.RandomState(0).uniform(-0.9, 0.9, (8, 2, 4, 4, 4)), jnp.float32)
    noise = _randn(1, x0.shape)
    t = jnp.array([1, 2, 10, 100, 400, 700, 900, 999])
    terms = _terms(d, _perfect_x0_model(d, x0, -1.0), x0, t, noise)
    assert float(jnp.abs(terms["vb"]).max()) < 1e-4  # bits per dim
    assert float(terms["mse"].max()) < 1e-6
    # sensitivity: the variance at the β end (v = +1) costs exactly KL(N(μ, σ̃²) ‖ N(μ, β)) per element
    s = d.schedule
    lo, hi = s.posterior_log_variance_clipped[np.asarray(t)], s.log_betas[np.asarray(t)]
    want = 0.5 * (-1 + hi - lo + np.exp(lo - hi)) / np.log(2)
    vb_hi = _terms(d, _perfect_x0_model(d, x0, 1.0), x0, t, noise)["vb"]
    np.testing.assert_allclose(vb_hi, want, rtol=1e-3, atol=1e-6)  # at t ≳ 500 σ̃² ≈ β: KL < 1e-8, below float32
    # t = 0 is the decoder NLL: −log2 P(|x0 − μ| < 1/255) with σ² = σ̃²_1 (mean is exactly x0 there)
    t0 = jnp.zeros(8, jnp.int32)
    vb0 = _terms(d, _perfect_x0_model(d, x0, -1.0), x0, t0, noise)["vb"]
    u = (1 / 255) / np.exp(0.5 * s.posterior_log_variance_clipped[0])
    cdf = lambda v: 0.5 * (1 + np.tanh(np.sqrt(2 / np.pi) * (v + 0.044715 * v**3)))  # DiT's approximate Φ
    np.testing.assert_allclose(vb0, -np.log2(cdf(u) - cdf(-u)), rtol=1e-4)


def test_vlb_trains_variance_only():
    """The VLB term sees a stop-gradient ε̂: its gradient reaches only the variance channels."""
    d = IDDPM()
    x0 = _randn(0)
    noise = _randn(1)
    t = jnp.array([5, 500])

    def vb_and_mse(p):
        fn = lambda x, tt, c, dr: jnp.concatenate([p["e"] * x, jnp.tanh(p["v"] * x)], -1)
        terms = d.loss_terms(fn, x0, t, noise, None, jnp.zeros(2, bool))
        return terms["vb"].sum(), terms["mse"].sum()

    p = {"e": jnp.float32(0.3), "v": jnp.float32(0.2)}
    g_vb, g_mse = jax.jit(lambda p: jax.jacrev(vb_and_mse)(p))(p)
    assert float(g_vb["e"]) == 0.0 and abs(float(g_vb["v"])) > 0
    assert abs(float(g_mse["e"])) > 0 and float(g_mse["v"]) == 0.0


# 1-D Gaussian toy: data x0 ~ N(MU, S²) stored as [N, 1, 1, 1, 1]; the model is the exact posterior oracle.
MU, S = 1.0, 0.5


def _iddpm_oracle(d: IDDPM, steps: int):
    """E[ε | x_t] and, in the learned-range channel, the exact Var[x_prev | x_t] = σ̃² + c1²·Var[x0 | x_t] of the
    respaced chain (Gaussian data: the ancestral sampler is then exact)."""
    sp = d.spaced(steps)
    a = sp.alphas_cumprod
    var_x0 = S**2 * (1 - a) / (a * S**2 + 1 - a)
    lo, hi = sp.posterior_log_variance_clipped, sp.log_betas
    frac = (np.log(sp.posterior_variance + sp.posterior_mean_coef1**2 * var_x0) - lo) / (hi - lo)
    v_tab = np.zeros(d.num_timesteps)
    v_tab[sp.timestep_map] = np.clip(2 * frac - 1, -1, 1)  # indexed by the original timestep the model sees
    ac, v_tab = d.schedule.f32("alphas_cumprod"), jnp.asarray(v_tab, jnp.float32)

    def fn(x, t, cond, drop):
        i = t.astype(jnp.int32)
        a = ac[i][:, None, None, None, None]
        eps = jnp.sqrt(1 - a) * (x - jnp.sqrt(a) * MU) / (a * S**2 + 1 - a)
        return jnp.concatenate([eps, jnp.broadcast_to(v_tab[i][:, None, None, None, None], x.shape)], -1)

    return fn


def _rf_oracle(x, t, cond, drop):
    """E[x0 − ε | x_t] for x_t = (1 − s)·x0 + s·ε."""
    s = (t / 1000)[:, None, None, None, None]
    r = x - (1 - s) * MU
    var = (1 - s) ** 2 * S**2 + s**2
    return MU + ((1 - s) * S**2 - s) * r / var


def _rel_err(x):
    x = np.asarray(x, np.float64).ravel()
    return abs(x.mean() - MU) / MU, abs(x.var() - S**2) / S**2


def _std_noise(n: int) -> jax.Array:
    """Initial noise standardised to mean 0, variance 1, so deterministic samplers show only their own bias."""
    z = jax.random.normal(jax.random.key(0), (n, 1, 1, 1, 1))
    return (z - z.mean()) / z.std()


def test_ancestral_sampler_recovers_gaussian():
    d = IDDPM()
    noise = jax.random.normal(jax.random.key(0), (40_000, 1, 1, 1, 1))  # 40k: sampling s.e. of the variance 0.7%
    x = jax.jit(lambda n, r: d.sample(_iddpm_oracle(d, 100), n, None, r, steps=100, cfg_scale=1.0))(
        noise, jax.random.key(1))
    err_mean, err_var = _rel_err(x)
    assert err_mean < 0.02 and err_var < 0.02, (err_mean, err_var)


def _converges(run, n_small: int) -> tuple[float, float]:
    """Variance error at n and 2n steps: a first-order ODE solver halves it."""
    e1, e2 = run(n_small)[1], run(2 * n_small)[1]
    assert 1.7 < e1 / e2 < 2.3, (e1, e2)
    return e1, e2


def test_ddim_sampler_recovers_gaussian():
    """DDIM(η=0) is Euler on the probability-flow ODE: on this toy its variance error is −5.6% at 100 steps and
    falls as 1/N, so we check convergence and the 2% bound at 500 steps. The mean keeps a −0.3% offset: x_T is
    drawn from N(0, 1) rather than N(sqrt(ᾱ_T)·MU, ·), and the deterministic map carries that over."""
    d = IDDPM(sampler="ddim")

    def run(steps):
        x = jax.jit(lambda n: d.sample(_iddpm_oracle(d, steps), n, None, None, steps=steps, cfg_scale=1.0))(
            _std_noise(10_000))
        return _rel_err(x)

    _converges(run, 250)
    err_mean, err_var = run(500)
    assert err_mean < 0.02 and err_var < 0.02, (err_mean, err_var)


def test_euler_flow_sampler_recovers_gaussian():
    """Euler on the exact velocity: variance error −9.4% at 30 steps, −2.9% at 100, first order in 1/N."""
    rf = RectifiedFlow(use_timestep_transform=False)

    def run(steps):
        return _rel_err(jax.jit(lambda n: rf.sample(_rf_oracle, n, None, steps=steps, cfg_scale=1.0))(
            _std_noise(10_000)))

    _converges(run, 100)
    err_mean, err_var = run(200)
    assert err_mean < 0.02 and err_var < 0.02, (err_mean, err_var)


# ---------------------------------------------------------------- frame mask, CFG, config switch


@pytest.mark.parametrize("name", ["rflow", "iddpm"])
def test_frame_mask_excludes_clean_frames(name):
    d = build_diffusion(ml_collections.ConfigDict({"name": name}))
    x0 = _randn(0)
    mask = jnp.array([[True, False, True], [False, False, True]])  # False = held clean
    seen = {}

    def fn(x, t, cond, drop):  # exact target on noised frames, garbage on clean ones
        seen["x"] = x
        garbage = jnp.where(mask[:, :, None, None, None], 0.0, 100.0)
        if name == "rflow":
            return jnp.concatenate([x0 - noise + garbage] * 2, -1)
        return jnp.concatenate([noise + garbage, jnp.full_like(x, -1.0)], -1)

    noise = _randn(1)
    t = jnp.array([300, 600])
    per = d.loss_terms(fn, x0, t.astype(jnp.float32) if name == "rflow" else t, noise, None, jnp.zeros(2, bool), mask)
    per = per if name == "rflow" else per["mse"]
    np.testing.assert_allclose(per, 0.0, atol=1e-6)
    # clean frames: x0 for rflow, q_sample(x0, t=0) for iddpm (as Open-Sora v1.1)
    clean = x0 if name == "rflow" else d.q_sample(x0, jnp.zeros(2, jnp.int32), noise)
    keep = ~np.asarray(mask)
    np.testing.assert_allclose(np.asarray(seen["x"])[keep], np.asarray(clean)[keep], rtol=1e-6)
    noised = np.asarray(mask)
    assert np.abs(np.asarray(seen["x"])[noised] - np.asarray(x0)[noised]).min() > 0


def test_guided_batches_cond_and_uncond_with_same_input():
    calls = []

    def fn(x, t, cond, drop):
        calls.append((x, t, cond, drop))
        base = jnp.arange(x.shape[-1] * 2, dtype=jnp.float32)
        return jnp.where(drop[:, None, None, None, None], 0.0, 1.0) * base + x[..., :1]

    x = _randn(0)
    cond = {"y": jnp.ones((2, 5))}
    out = guided(fn, 4.0)(x, jnp.full((2,), 10.0), cond)
    (xx, tt, cc, dd), = calls
    assert xx.shape[0] == 4 and np.array_equal(xx[:2], xx[2:]) and cc["y"].shape == (4, 5)
    assert list(np.asarray(dd)) == [False, False, True, True]
    base = np.arange(8, dtype=np.float32)
    np.testing.assert_allclose(out - x[..., :1], np.broadcast_to(np.r_[4 * base[:4], base[4:]], out.shape), rtol=1e-5)
    out3 = guided(fn, 4.0, cfg_channels=3)(x, jnp.full((2,), 10.0), cond)  # Open-Sora v1.0: 3 of 4 eps channels
    np.testing.assert_allclose(out3 - x[..., :1], np.broadcast_to(np.r_[4 * base[:3], base[3:]], out.shape), rtol=1e-5)


def test_caption_drop_rate():
    assert abs(float(caption_drop(jax.random.key(0), 100_000, 0.1).mean()) - 0.1) < 0.005


@pytest.mark.parametrize("name", sorted(DIFFUSIONS))
def test_training_drops_captions_at_configured_rate(name):
    seen = []
    d = build_diffusion(ml_collections.ConfigDict({"name": name, "caption_dropout": 0.25}))

    def fn(x, t, c, drop):
        jax.debug.callback(lambda dr: seen.append(np.asarray(dr)), drop)
        return jnp.zeros(x.shape[:-1] + (2 * x.shape[-1],))

    x0 = jnp.zeros((20_000, 1, 1, 1, 1))
    # v1.2's scheduler takes the clip's pixel size for its shift (it samples in vidjax.sample; its loss is v1.2's)
    kw = dict(height=256, width=256, num_frames=1) if name == "rflow_v12" else {}
    jax.block_until_ready(jax.jit(lambda r: d.loss(fn, x0, {} if kw else None, r, **kw))(jax.random.key(3)))
    assert abs(seen[0].mean() - 0.25) < 0.01


@pytest.mark.parametrize("cfg", [
    {"name": "iddpm", "sampler": "ancestral"},
    {"name": "iddpm", "sampler": "ddim", "ddim_eta": 0.5, "cfg_channels": 3},
    {"name": "iddpm", "learn_sigma": False},
    {"name": "rflow", "sample_method": "uniform", "transform_hw": [256, 256]},
    {"name": "sit", "path": "gvp", "prediction": "noise", "sampler": "heun"},
    {"name": "sit", "path": "vp", "prediction": "score", "loss_weight": "likelihood", "sampler": "sde"},
])
def test_config_switch_trains_and_samples(cfg):
    """Each configured objective: a jitted train step lowers the loss of a tiny linear model; sampling runs."""
    c = ml_collections.ConfigDict({**cfg, "sample_steps": 10, "cfg_scale": 5.0})
    d = build_diffusion(c)
    assert isinstance(d, DIFFUSIONS[cfg["name"]])
    C = SHAPE[-1]
    c_out = C if cfg.get("learn_sigma") is False else 2 * C

    def model_fn(p):
        def fn(x, t, cond, drop):
            h = x @ p["w"] + (t / 1000)[:, None, None, None, None] * p["b"]
            return h + jnp.where(drop, 0.0, 1.0)[:, None, None, None, None] * cond["y"][:, None, None, None, :]
        return fn

    p = {"w": jnp.zeros((C, c_out)), "b": jnp.zeros(c_out)}
    x0 = jnp.tile(jnp.array([0.5, -0.5, 0.25, 0.0]), SHAPE[:-1] + (1,))
    cond = {"y": jnp.zeros((SHAPE[0], c_out))}

    @jax.jit
    def train_step(p, rng):
        (loss, metrics), g = jax.value_and_grad(lambda p: d.loss(model_fn(p), x0, cond, rng), has_aux=True)(p)
        return jax.tree.map(lambda a, b: a - 0.05 * b, p, g), loss

    losses = []
    for k in range(30):
        p, loss = train_step(p, jax.random.key(k))
        losses.append(float(loss))
    assert np.isfinite(losses).all() and np.mean(losses[-5:]) < np.mean(losses[:5])
    noise = _randn(2)
    out = jax.jit(lambda n, r: d.sample(model_fn(p), n, cond, r, steps=c.sample_steps, cfg_scale=c.cfg_scale))(
        noise, jax.random.key(1))
    assert out.shape == SHAPE and np.isfinite(np.asarray(out)).all()


def test_bad_config_raises():
    with pytest.raises(ValueError, match="diffusion.name"):
        build_diffusion({"name": "ddpm"})
    with pytest.raises(ValueError, match="sampler"):
        build_diffusion({"name": "iddpm", "sampler": "dpm"})
    with pytest.raises(ValueError, match="sample_method"):
        build_diffusion({"name": "rflow", "sample_method": "beta"})


def test_rflow_x0_prediction_oracle_gives_zero_loss_and_exact_sample():
    """With prediction="x0", a model that outputs the clean data has zero velocity error, and the
    Euler sampler driven by it lands on that data."""
    rf = RectifiedFlow(prediction="x0", use_timestep_transform=False, caption_dropout=0.0)
    x0 = jax.random.normal(jax.random.key(1), (3, 2, 4, 4, 2))
    loss, _ = rf.loss(lambda x, t, c, d: x0, x0, {}, jax.random.key(2))
    assert float(loss) < 1e-10
    v_rf = RectifiedFlow(prediction="v", use_timestep_transform=False, caption_dropout=0.0)
    bad, _ = v_rf.loss(lambda x, t, c, d: x0, x0, {}, jax.random.key(2))
    assert float(bad) > 0.1  # the same output read as a velocity is wrong
    noise = jax.random.normal(jax.random.key(3), x0.shape)
    z = rf.sample(lambda x, t, c, d: x0, noise, {}, steps=5, cfg_scale=1.0)
    np.testing.assert_allclose(np.asarray(z), np.asarray(x0), atol=1e-5)


def test_rflow_x0_loss_weight_is_clean_data_mse():
    """loss_weight="x0" multiplies the velocity MSE by s² (s clamped at x0_min_s): with x0-prediction that is
    exactly the MSE between the predicted and the true clean data, at every t."""
    x0 = jax.random.normal(jax.random.key(1), (4, 2, 4, 4, 3))
    noise = jax.random.normal(jax.random.key(2), x0.shape)
    guess = jax.random.normal(jax.random.key(3), x0.shape)
    t = jnp.array([20.0, 100.0, 500.0, 990.0])  # s = 0.02 is below x0_min_s = 0.05
    kw = dict(prediction="x0", use_timestep_transform=False, caption_dropout=0.0)
    weighted = RectifiedFlow(loss_weight="x0", **kw).loss_terms(lambda *a: guess, x0, t, noise, {}, None)
    plain = RectifiedFlow(**kw).loss_terms(lambda *a: guess, x0, t, noise, {}, None)
    s = np.maximum(np.asarray(t) / 1000, 0.05)
    # v = (x̂0 − x_t)/s against x0 − ε = (x0 − x_t)/s for s ≥ x0_min_s; below it, the clamp changes the target
    expect = np.mean(np.square(np.asarray(guess - x0)), axis=(1, 2, 3, 4))
    np.testing.assert_allclose(np.asarray(weighted)[1:], expect[1:], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(weighted), np.asarray(plain) * s**2, rtol=1e-5)
    with pytest.raises(ValueError, match="loss_weight"):
        RectifiedFlow(loss_weight="snr")


# ---------------------------------------------------------------- Open-Sora v1.2's rflow, exactly

V12_SIZES = [(240, 426, 51), (720, 1280, 102), (480, 854, 204), (144, 256, 1), (360, 640, 408), (166, 221, 34)]


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_v12_shift_and_sampler_timesteps_equal_open_sora(dtype):
    """Shift and the 30 sampling timesteps against a transcription of v1.2's scheduler run in torch."""
    torch = pytest.importorskip("torch")
    ref = pytest.importorskip("_stdit3_torch")
    from vidjax.diffusion.rectified_flow import RFlowV12, v12_shift

    rf = RFlowV12(num_sampling_steps=30, shift_dtype=dtype)
    tdtype = getattr(torch, dtype)
    for h, w, f in V12_SIZES:
        kw = ref.model_kwargs(2, h, w, f, 24, tdtype)
        res = kw["height"] * kw["width"]
        nf = torch.ones_like(kw["num_frames"]) if f == 1 else kw["num_frames"] // 17 * 5
        expected_ratio = float(((res / (512 * 512)).sqrt() * nf.sqrt())[0])
        assert v12_shift(h, w, f, dtype=dtype)[0] == expected_ratio, (h, w, f)
        expected = torch.stack(ref.rflow_timesteps(30, 2, kw))[:, 0].numpy()
        assert expected.dtype == np.float32
        np.testing.assert_array_equal(rf.timesteps(h, w, f), expected, err_msg=f"{(h, w, f)}")
    with pytest.raises(ValueError, match="num_frames=15"):  # v1.2 would divide by zero
        rf.timesteps(240, 426, 15)
    # the documented example: bf16 inputs round the shift of 240×426 at 51 frames
    assert v12_shift(240, 426, 51, dtype=dtype)[0] == pytest.approx(2.421875 if dtype == "bfloat16" else 2.41872,
                                                                     abs=1e-5)


def test_v12_training_timesteps_are_transformed_like_open_sora():
    torch = pytest.importorskip("torch")
    ref = pytest.importorskip("_stdit3_torch")
    from vidjax.diffusion.rectified_flow import RFlowV12

    t = np.linspace(0, 1000, 17).astype(np.float32)
    kw = ref.model_kwargs(17, 480, 854, 102, 24, torch.bfloat16)
    expected = ref.timestep_transform(torch.from_numpy(t), kw, num_timesteps=1000).numpy()
    np.testing.assert_allclose(np.asarray(RFlowV12().transform(jnp.asarray(t), 480, 854, 102)), expected, rtol=1e-6)


def test_v12_frame_masks_follow_mask_ratios():
    from vidjax.diffusion.rectified_flow import v12_frame_masks

    T = 12
    m = np.asarray(v12_frame_masks(jax.random.key(0), 2000, T, {"image_head": 0.5, "quarter_tail": 0.3}))
    clean = ~m
    head = clean[:, 0] & (clean.sum(1) == 1)
    tail = np.array([r.sum() in (1, 2, 3) and r[T - r.sum():].all() and not r[0] for r in clean])
    none = clean.sum(1) == 0
    assert (head | tail | none).all()  # nothing else is drawn
    assert abs(head.mean() - 0.5) < 0.04 and abs(tail.mean() - 0.3) < 0.04 and abs(none.mean() - 0.2) < 0.04
    assert set(clean[tail].sum(1)) == {1, 2, 3}  # 1 .. T // 4 tail frames
    # v1.2's stage-1 ratios: 80% of clips keep every frame noised; "random" never cleans every frame
    stage1 = {"random": 0.05, "intepolate": 0.005, "quarter_random": 0.005, "quarter_head": 0.005,
              "quarter_tail": 0.005, "quarter_head_tail": 0.005, "image_random": 0.025, "image_head": 0.05,
              "image_tail": 0.025, "image_head_tail": 0.025}
    m = np.asarray(v12_frame_masks(jax.random.key(1), 4000, T, stage1))
    assert abs(m.all(1).mean() - 0.8) < 0.03 and m.any(1).all()
    only_random = np.asarray(v12_frame_masks(jax.random.key(2), 500, 5, {"random": 1.0}))
    assert only_random.any(1).all() and (~only_random).any()
    assert np.asarray(v12_frame_masks(jax.random.key(3), 4, 1, {"image_head": 1.0})).all()  # one frame: no clean
    with pytest.raises(ValueError, match="unknown mask types"):
        v12_frame_masks(jax.random.key(0), 2, T, {"interpolate": 0.1})
    with pytest.raises(ValueError, match="sum to"):
        v12_frame_masks(jax.random.key(0), 2, T, {"random": 0.7, "image_head": 0.6})


def test_v12_loss_holds_clean_frames_and_passes_x_mask():
    from vidjax.diffusion.guidance import normal
    from vidjax.diffusion.rectified_flow import RFlowV12

    rf = RFlowV12(mask_ratios={"quarter_head": 1.0}, caption_dropout=0.0)
    seen = {}

    def model_fn(x_t, t, cond, drop):
        seen.update(x_t=np.asarray(x_t), t=np.asarray(t), x_mask=np.asarray(cond["x_mask"]))
        return 0.5 * x_t

    rng = np.random.default_rng(0)
    x0 = jnp.asarray(rng.normal(size=(3, 8, 4, 4, 4)), jnp.float32)
    key = jax.random.key(4)
    loss, _ = rf.loss(model_fn, x0, {}, key, height=240, width=426, num_frames=51)
    xm, x_t, t = seen["x_mask"], seen["x_t"], seen["t"]
    assert (~xm[:, 0]).all() and xm[:, 2:].all()  # quarter_head: 1..2 clean head frames of 8
    np.testing.assert_array_equal(x_t[~xm], np.asarray(x0)[~xm])  # clean frames are x0, exactly
    noise = np.asarray(normal(jax.random.split(key, 4)[1], x0.shape))
    s = (t / 1000)[:, None, None, None, None]
    np.testing.assert_allclose(x_t[xm], ((1 - s) * np.asarray(x0) + s * noise)[xm], atol=1e-5)
    err = (0.5 * x_t - (np.asarray(x0) - noise)) ** 2
    per = np.array([err[b][xm[b]].mean() for b in range(3)])  # v1.2 mean_flat(mask=...)
    np.testing.assert_allclose(float(loss), per.mean(), rtol=1e-5)


def test_rflow_mask_ratios_train_condition_frames_through_x_mask():
    """``diffusion.mask_ratios`` on vidjax's rectified flow (the one training loop): v1.2's frame masks hold clean
    frames at x0, leave them out of the loss and reach the model as ``cond["x_mask"]``; None changes nothing."""
    rf = RectifiedFlow(mask_ratios={"image_head": 1.0}, caption_dropout=0.0, use_timestep_transform=False)
    seen = {}

    def model_fn(x_t, t, cond, drop):
        seen.update(x_t=np.asarray(x_t), x_mask=np.asarray(cond["x_mask"]))
        return 0.5 * x_t

    x0 = jnp.asarray(np.random.default_rng(0).normal(size=(3, 4, 4, 4, 4)), jnp.float32)
    key = jax.random.key(4)
    loss, _ = rf.loss(model_fn, x0, {"mask": jnp.ones((3, 2), bool)}, key)
    xm = seen["x_mask"]
    assert (~xm[:, 0]).all() and xm[:, 1:].all()  # image_head: the first latent frame is the condition
    np.testing.assert_array_equal(seen["x_t"][:, 0], np.asarray(x0)[:, 0])
    plain = RectifiedFlow(caption_dropout=0.0, use_timestep_transform=False)
    t = plain.sample_t(jax.random.split(key, 3)[0], x0.shape)
    noise = normal(jax.random.split(key, 3)[1], x0.shape)
    want = plain.loss_terms(lambda x, t, c, d: 0.5 * x, x0, t, noise, {}, jnp.zeros(3, bool), jnp.asarray(xm)).mean()
    np.testing.assert_allclose(float(loss), float(want), rtol=1e-6)
    with pytest.raises(ValueError, match="unknown mask types"):
        RectifiedFlow(mask_ratios={"image_front": 0.5})


def test_rflow_sampler_keeps_condition_frames_and_matches_the_plain_sampler_without_them():
    rf = RectifiedFlow(use_timestep_transform=False)
    z = jnp.asarray(np.random.default_rng(1).normal(size=(2, 3, 2, 2, 4)), jnp.float32)
    ref = jnp.asarray(np.random.default_rng(2).normal(size=z.shape), jnp.float32)
    xm = {}

    def fn(x, t, cond, drop):
        if "x_mask" in cond:
            xm["seen"] = cond["x_mask"].shape
        return -x

    mask = jnp.array([[0.0, 1.0, 1.0], [0.0, 0.0, 1.0]])
    start = jnp.where((mask < 1)[:, :, None, None, None], ref, z)
    out = rf.sample(fn, start, {}, jax.random.key(0), steps=4, cfg_scale=1.0, mask=mask)
    np.testing.assert_array_equal(out[0, 0], ref[0, 0])  # the condition frames come back untouched
    np.testing.assert_array_equal(out[1, :2], ref[1, :2])
    assert not np.allclose(out[0, 1], z[0, 1]) and xm["seen"] == (2, 3)
    free = rf.sample(fn, z, {}, None, steps=4, cfg_scale=1.0)
    np.testing.assert_allclose(rf.sample(fn, z, {}, None, steps=4, cfg_scale=1.0, mask=jnp.ones((2, 3))), free,
                               atol=1e-6)


def test_mask_strategies_follow_v12s_syntax_by_hand():
    from vidjax.diffusion.conditions import append_scores, apply_mask_strategy, parse_mask_strategy
    from vidjax.errors import InputError

    assert parse_mask_strategy("0") == [(0, 0, 0, 0, 1, 0.0)]
    assert parse_mask_strategy("0,0,-1,0,2,0.5;1,1") == [(0, 0, -1, 0, 2, 0.5), (1, 1, 0, 0, 1, 0.0)]
    ref = np.arange(3, dtype=np.float32).reshape(3, 1, 1, 1) + 1  # latent frames valued 1, 2, 3
    z = np.zeros((5, 1, 1, 1), np.float32)
    out, mask = apply_mask_strategy(z, [ref], "0,0,-1,0,2,0.5")  # ref_start 2, length clipped to 1
    assert out[:, 0, 0, 0].tolist() == [3, 0, 0, 0, 0] and mask.tolist() == [0.5, 1, 1, 1, 1]
    out, mask = apply_mask_strategy(z, [ref], "0,0,0,-2,4")  # target 3, length clipped to 2
    assert out[:, 0, 0, 0].tolist() == [0, 0, 0, 1, 2] and mask.tolist() == [1, 1, 1, 0, 0]
    out, mask = apply_mask_strategy(np.zeros((15, 1, 1, 1)), [np.ones((15, 1, 1, 1))], "0,0,0,3,1", align=5)
    assert mask.tolist().index(0.0) == 5  # v1.2's find_nearest_point: 3 -> 5
    out, mask = apply_mask_strategy(z, [ref], "1,0,0,0,1")  # another loop's group: nothing here
    assert (mask == 1).all() and (out == 0).all()
    assert z.sum() == 0  # the input is not modified
    for bad, message in [("0,a", "integers"), ("0,1", "1 reference"), ("0,0,0,9,1", "outside"),
                         ("0,0,0,0,0", "length >= 1"), ("1,2,3,4,5,6,7", "1 to 6")]:
        with pytest.raises(InputError, match=message):
            apply_mask_strategy(z, [ref], bad)
    assert append_scores(["a cat", "a dog aesthetic score: 5.0."], aes=6.5, flow=10) == [
        "a cat aesthetic score: 6.5. motion score: 10.0.", "a dog aesthetic score: 5.0. motion score: 10.0."]


def test_rflow_v12_is_for_sampling_and_stage1_sample_carries_v12s_defaults():
    from pathlib import Path

    from vidjax.config import load_config
    from vidjax.diffusion.rectified_flow import RFlowV12
    from vidjax.errors import ConfigError
    from vidjax.training.diffusion import check_config

    c = load_config(str(Path(__file__).resolve().parents[1] / "configs/opensora_v1_2/stage1.py:sample"))
    d = build_diffusion(c.diffusion)
    assert isinstance(d, RFlowV12) and d.shift_dtype == "bfloat16" and d.use_timestep_transform
    assert (c.diffusion.sample_steps, c.diffusion.cfg_scale, c.seed, c.data.fps) == (30, 7.0, 42, 24)  # sample.py
    with pytest.raises(ConfigError, match="rflow_v12' is v1.2's sampler"):
        check_config(c)


# ---------------------------------------------------------------- SiT's interpolants


SIT_PATHS = {  # closed forms of SiT's path.py, τ from noise (0) to data (1): (α, σ)
    "linear": lambda u: (u, 1 - u),
    "gvp": lambda u: (np.sin(np.pi * u / 2), np.cos(np.pi * u / 2)),
    "vp": lambda u: (np.exp(-0.25 * (1 - u) ** 2 * 19.9 - 0.05 * (1 - u)),
                     np.sqrt(1 - np.exp(-0.5 * (1 - u) ** 2 * 19.9 - 0.1 * (1 - u)))),
}


@pytest.mark.parametrize("path", sorted(SIT_PATHS))
@pytest.mark.parametrize("prediction", ["velocity", "score", "noise"])
def test_sit_q_sample_and_targets_match_closed_forms(path, prediction):
    """x_τ = α·x0 + σ·ε; the velocity target is d x_τ / dτ (checked by finite differences of q_sample, not by the
    same formula), the score −ε/σ, the noise ε."""
    d = SiT(path=path, prediction=prediction)
    x0, eps = _randn(0), _randn(1)
    tau = jnp.array([0.3, 0.8])
    a, s = (np.asarray(v, np.float64).reshape(2, 1, 1, 1, 1) for v in SIT_PATHS[path](np.array([0.3, 0.8])))
    np.testing.assert_allclose(d.q_sample(x0, eps, tau), a * x0 + s * eps, rtol=1e-5, atol=1e-6)
    target = np.asarray(d.target(x0, eps, tau), np.float64)
    if prediction == "velocity":
        h = 1e-3
        fd = (np.asarray(d.q_sample(x0, eps, tau + h), np.float64) - np.asarray(d.q_sample(x0, eps, tau - h))) / (2 * h)
        np.testing.assert_allclose(target, fd, rtol=2e-3, atol=2e-3)
    elif prediction == "score":
        np.testing.assert_allclose(target, -np.asarray(eps) / s, rtol=1e-5)
    else:
        np.testing.assert_array_equal(target, eps)


@pytest.mark.parametrize("path", sorted(SIT_PATHS))
def test_sit_velocity_from_score_and_noise_is_the_exact_velocity(path):
    """Data N(0, c²): x_τ ~ N(0, α²c² + σ²), the score is −x/(α²c² + σ²), E[ε | x] = σ·x/(α²c² + σ²) and the
    exact velocity E[α'·x0 + σ'·ε | x] = (α'α·c² + σ'σ)·x/(α²c² + σ²). A score or noise network that outputs the
    exact value must give that velocity through SiT's drift formulas, and back."""
    c2 = 0.25
    x = _randn(0)
    tau = jnp.full((2, 1, 1, 1, 1), 0.4)
    d = SiT(path=path)
    a, da = d.alpha(tau)
    s, ds = d.sigma(tau)
    var = a**2 * c2 + s**2
    exact_v = (da * a * c2 + ds * s) * x / var
    np.testing.assert_allclose(SiT(path=path, prediction="score").velocity(-x / var, x, tau), exact_v, rtol=1e-5)
    np.testing.assert_allclose(SiT(path=path, prediction="noise").velocity(s * x / var, x, tau), exact_v, rtol=1e-5)
    np.testing.assert_allclose(d.score(exact_v, x, tau), -x / var, rtol=1e-4)


def test_sit_linear_velocity_euler_is_the_rectified_flow_sampler():
    """SiT's linear path, velocity target and Euler ODE equal vidjax's rectified-flow sampler (no shift), guided,
    on a nonlinear model and fixed noise: the same timesteps reach the model and the same steps are taken."""
    w = jnp.asarray(np.random.RandomState(3).randn(SHAPE[-1], 2 * SHAPE[-1]), jnp.float32) * 0.5

    def fn(x, t, cond, drop):
        h = jnp.tanh(x @ w) * (1 + t / 1000)[:, None, None, None, None]
        return h + jnp.where(drop, 0.0, 1.0)[:, None, None, None, None] * cond["y"][:, None, None, None, :]

    cond = {"y": jnp.asarray(np.random.RandomState(4).randn(SHAPE[0], 2 * SHAPE[-1]), jnp.float32)}
    noise = _randn(5)
    rf = RectifiedFlow(use_timestep_transform=False).sample(fn, noise, cond, steps=12, cfg_scale=3.0)
    sit = SiT(path="linear", prediction="velocity", sampler="euler").sample(fn, noise, cond, steps=12, cfg_scale=3.0)
    np.testing.assert_allclose(np.asarray(sit), np.asarray(rf), atol=1e-6)
    heun = SiT(path="linear", sampler="heun").sample(fn, noise, cond, steps=12, cfg_scale=3.0)
    assert np.abs(np.asarray(heun) - np.asarray(rf)).max() > 1e-4  # a different integrator, not the same path


def _sit_oracle(d: SiT):
    """The exact network output of ``d``'s target for data N(MU, S²) (per element)."""

    def fn(x, t, cond, drop):
        tau = (1 - t / 1000)[:, None, None, None, None]
        a, da = d.alpha(tau)
        s, ds = d.sigma(tau)
        var = a**2 * S**2 + s**2
        r = x - a * MU  # x_τ − E[x_τ]
        eps_hat = s * r / var  # E[ε | x]
        x0_hat = MU + a * S**2 * r / var  # E[x0 | x]
        out = {"velocity": da * x0_hat + ds * eps_hat, "score": -r / var, "noise": eps_hat}[d.prediction]
        return jnp.concatenate([out, out], -1)

    return fn


@pytest.mark.parametrize("path,prediction,sampler,steps", [
    ("gvp", "velocity", "heun", 50), ("vp", "noise", "heun", 100), ("linear", "score", "sde", 400),
    ("gvp", "velocity", "sde", 400),
])
def test_sit_samplers_recover_gaussian(path, prediction, sampler, steps):
    """Each sampler on the exact network output of its target brings N(0, 1) noise to data N(MU, S²)."""
    d = SiT(path=path, prediction=prediction, sampler=sampler)
    noise = _std_noise(10_000) if sampler != "sde" else jax.random.normal(jax.random.key(0), (10_000, 1, 1, 1, 1))
    out = jax.jit(lambda n, r: d.sample(_sit_oracle(d), n, None, r, steps=steps, cfg_scale=1.0))(
        noise, jax.random.key(1))
    err_mean, err_var = _rel_err(out)
    assert err_mean < 0.03 and err_var < 0.05, (err_mean, err_var)


@pytest.mark.parametrize("path,prediction", [("vp", "noise"), ("gvp", "score"), ("linear", "velocity")])
def test_sit_oracle_has_the_least_loss(path, prediction):
    """The exact conditional expectation scores lower than a perturbed one, for every target (the loss is an MSE to
    the right quantity, with the right time convention)."""
    d = SiT(path=path, prediction=prediction, loss_weight="none")
    x0 = MU + S * jax.random.normal(jax.random.key(0), (4096, 1, 1, 1, 1))
    oracle = _sit_oracle(d)
    losses = [float(jax.jit(lambda r, k=k: d.loss(lambda x, t, c, dr: oracle(x, t, c, dr) * k, x0, None, r)[0])(
        jax.random.key(2))) for k in (1.0, 1.1, 0.9)]
    assert losses[0] < min(losses[1:]), losses


def test_sit_bad_fields_and_condition_frames_are_one_line_errors():
    for field, value in (("path", "cosine"), ("prediction", "x0"), ("sampler", "dopri5"), ("loss_weight", "snr")):
        with pytest.raises(ValueError, match=f"diffusion.{field}="):
            SiT(**{field: value})
    with pytest.raises(ValueError, match="condition frames"):
        SiT().sample(lambda x, t, c, d: x, _randn(0), None, steps=2, cfg_scale=1.0, mask=jnp.ones((2, 3)))
