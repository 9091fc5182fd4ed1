"""One STDiT train step, vidjax against PyTorch, on the same machine in the same run (a script, not a test).

    python benchmarks/step_vs_torch.py                   # both configs, 3 rounds of 6 timed steps per side
    python benchmarks/step_vs_torch.py --config mid --rounds 5
    python benchmarks/step_vs_torch.py --profile         # where the vidjax step's time goes, scan vs unrolled
    python benchmarks/step_vs_torch.py --dtype bfloat16  # mixed precision on both sides (Open-Sora trains in bf16)
    python benchmarks/step_vs_torch.py --attention       # one spatial attention and its batched products, both sides

The same work on both sides: an STDiT (Open-Sora v1.0 blocks) with learned sigma, IDDPM's loss (eps MSE + the VB
term on a frozen mean, t ~ U{0..999}), gradient clipping at 1.0 and AdamW, fp32, fresh random latents, captions
and timesteps every step. The PyTorch side is the STDiT the parity tests hold vidjax to (``tests/test_interop.py``:
written from Open-Sora v1.0's code, with its xformers caption packing done per sample) and a PyTorch IDDPM loss
written here from the same formulas; the vidjax side is ``STDiT`` + ``IDDPM.loss`` + optax in one jitted step,
with the blocks unrolled (``model.scan_layers=False``), and once more with them in one ``nnx.scan`` (the
default of the full-size configs, for compile time) to show what the scan costs. The sides alternate round by
round, so all see the same machine state.

``--dtype bfloat16``: mixed precision as Open-Sora trains (fp32 weights and optimizer, bf16 matmuls): the vidjax
model with ``dtype="bfloat16"``, the PyTorch step under ``torch.autocast("cpu", torch.bfloat16)``; the matmul
peaks are then bf16 ones (bf16 inputs, fp32 sums, on both sides).

Configs: ``mid``: depth 4, width 256, 4 heads, patch 1×2×2, latent 8×32×32×4 (2,048 tokens), captions 120 × 4096,
batch 2; ``xl``: one XL/2-width stack (hidden 1152, 16 heads, depth 2) on 4×32×32 latents.
Prints per config: each side's median (and spread) per step, the ratio vidjax / PyTorch, model TFLOP per step
(6 · params · tokens + attention), and each side's share of a matmul peak measured in the same run; then each
side's CPU seconds per step and the cores they kept busy (``getrusage`` around its steps: the sides never overlap).
"""

from __future__ import annotations

import argparse
import collections
import math
import os
import re
import resource
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # test_interop: the PyTorch reference the parity tests use
CONFIGS = {
    "mid": dict(depth=4, hidden=256, heads=4, latent=(8, 32, 32), batch=2),
    "xl": dict(depth=2, hidden=1152, heads=16, latent=(4, 32, 32), batch=2),
}
CAPTION, L, C_IN, PATCH = 4096, 120, 4, (1, 2, 2)


def schedule():
    """Open-Sora v1.0 / IDDPM linear betas (1000 steps) and the derived float64 tables."""
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
    ac = np.cumprod(1 - betas)
    ac_prev = np.append(1.0, ac[:-1])
    post_var = betas * (1 - ac_prev) / (1 - ac)
    return dict(betas=betas, sqrt_ac=np.sqrt(ac), sqrt_1m_ac=np.sqrt(1 - ac), sqrt_recip_ac=np.sqrt(1 / ac),
                sqrt_recipm1_ac=np.sqrt(1 / ac - 1), post_logvar=np.log(np.append(post_var[1], post_var[1:])),
                coef1=betas * np.sqrt(ac_prev) / (1 - ac), coef2=(1 - ac_prev) * np.sqrt(1 - betas) / (1 - ac))


def make_inputs(rng, cfg):
    B = cfg["batch"]
    mask = np.zeros((B, L), bool)
    for b in range(B):
        mask[b, : rng.integers(10, L + 1)] = True
    return dict(x=rng.normal(size=(B, *cfg["latent"], C_IN)).astype(np.float32),
                y=rng.normal(size=(B, L, CAPTION)).astype(np.float32), mask=mask,
                t=rng.integers(0, 1000, B), noise=rng.normal(size=(B, *cfg["latent"], C_IN)).astype(np.float32))


# --------------------------------------------------------------------------------------
# PyTorch side
# --------------------------------------------------------------------------------------

def torch_step_fn(cfg, dtype: str = "float32"):
    import contextlib

    import torch
    from test_interop import RefSTDiT  # the reference the parity tests use

    torch.manual_seed(0)
    model = RefSTDiT(cfg["latent"], cfg["depth"], cfg["hidden"], cfg["heads"], CAPTION, L, 1.0, 1.0,
                     in_channels=C_IN, patch=PATCH)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0, eps=1e-8)
    s = {k: torch.from_numpy(v) for k, v in schedule().items()}

    def gather(name, t):
        return s[name][t].float().view(-1, 1, 1, 1, 1)

    def loss_fn(inp):
        x0 = torch.from_numpy(inp["x"]).permute(0, 4, 1, 2, 3)
        noise = torch.from_numpy(inp["noise"]).permute(0, 4, 1, 2, 3)
        t = torch.from_numpy(inp["t"])
        x_t = gather("sqrt_ac", t) * x0 + gather("sqrt_1m_ac", t) * noise
        out = model(x_t, t.float(), torch.from_numpy(inp["y"])[:, None], torch.from_numpy(inp["mask"]).long())
        eps, v = out.chunk(2, dim=1)
        mse = ((eps - noise) ** 2).mean(dim=(1, 2, 3, 4))
        # VB term with the mean frozen (IDDPM "learned range" variance)
        true_mean = gather("coef1", t) * x0 + gather("coef2", t) * x_t
        true_logvar = gather("post_logvar", t)
        frac = (v + 1) / 2
        model_logvar = frac * torch.log(gather("betas", t)) + (1 - frac) * true_logvar
        pred_x0 = gather("sqrt_recip_ac", t) * x_t - gather("sqrt_recipm1_ac", t) * eps.detach()
        model_mean = gather("coef1", t) * pred_x0 + gather("coef2", t) * x_t
        kl = 0.5 * (-1.0 + model_logvar - true_logvar + torch.exp(true_logvar - model_logvar)
                    + (true_mean - model_mean) ** 2 * torch.exp(-model_logvar))
        kl = kl.mean(dim=(1, 2, 3, 4)) / math.log(2.0)
        # t = 0: discretized Gaussian decoder NLL
        centered, inv = x0 - model_mean, torch.exp(-0.5 * model_logvar)

        def cdf(z):
            return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (z + 0.044715 * z**3)))

        cdf_plus, cdf_min = cdf(inv * (centered + 1 / 255)), cdf(inv * (centered - 1 / 255))
        log_probs = torch.where(x0 < -0.999, torch.log(cdf_plus.clamp(min=1e-12)),
                                torch.where(x0 > 0.999, torch.log((1 - cdf_min).clamp(min=1e-12)),
                                            torch.log((cdf_plus - cdf_min).clamp(min=1e-12))))
        nll = -log_probs.mean(dim=(1, 2, 3, 4)) / math.log(2.0)
        return (mse + torch.where(t == 0, nll, kl)).mean()

    def step(inp):
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", torch.bfloat16) if dtype == "bfloat16" else contextlib.nullcontext():
            loss = loss_fn(inp)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return float(loss.detach())

    return step, sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------
# vidjax side
# --------------------------------------------------------------------------------------

def jax_step_fn(cfg, scan_layers: bool = False, dtype: str = "float32", mesh=None, compiler_options=None):
    """(run, params): ``run(inputs) -> loss`` takes one optimizer step. ``mesh``: a 1-D mesh to split the batch
    over (the state replicated); ``compiler_options``: XLA options for the step (``benchmarks/cpu_trials.py``)."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from vidjax.diffusion.iddpm import IDDPM
    from vidjax.models.stdit import STDiT, count_params, stdit_config

    model = STDiT(stdit_config(depth=cfg["depth"], hidden=cfg["hidden"], heads=cfg["heads"], patch=PATCH,
                               in_channels=C_IN, learn_sigma=True, caption_channels=CAPTION, model_max_length=L,
                               scan_layers=scan_layers, dtype=dtype),
                  rngs=nnx.Rngs(0))
    params = count_params(model)
    graphdef, state = nnx.split(model)
    diffusion = IDDPM(learn_sigma=True, caption_dropout=0.0)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-4, eps=1e-8, weight_decay=0.0))
    opt_state = tx.init(state)

    def loss_fn(state, x0, y, mask, t, noise):
        def model_fn(x, tt, cond, drop):
            return nnx.merge(graphdef, state)(x, tt, cond["y"], cond["mask"])

        terms = diffusion.loss_terms(model_fn, x0, t, noise, {"y": y, "mask": mask}, jnp.zeros(x0.shape[0], bool))
        return terms["loss"].mean()

    @partial(jax.jit, compiler_options=compiler_options)
    def step(state, opt_state, x0, y, mask, t, noise):
        loss, grads = jax.value_and_grad(loss_fn)(state, x0, y, mask, t, noise)
        updates, opt_state = tx.update(grads, opt_state, state)
        return optax.apply_updates(state, updates), opt_state, loss

    rows = None  # the batch's placement: the default device, or split over ``mesh``
    if mesh is not None:
        rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(mesh.axis_names[0]))
        state, opt_state = jax.device_put((state, opt_state), rep)
    box = [state, opt_state]

    def args(inp):
        batch = (inp["x"], inp["y"], inp["mask"], inp["t"].astype(np.int32), inp["noise"])
        return box[0], box[1], *(a if rows is None else jax.device_put(a, rows) for a in batch)

    def run(inp):
        box[0], box[1], loss = step(*args(inp))
        return float(loss)

    run.hlo = lambda inp: step.lower(*args(inp)).compile().as_text()  # for profiles (optimised HLO)

    return run, params


# --------------------------------------------------------------------------------------
# Peak, FLOPs, the alternating loop
# --------------------------------------------------------------------------------------

def matmul_peaks(n: int = 2048, reps: int = 5, dtype: str = "float32") -> tuple[float, float]:
    """(PyTorch, JAX) GFLOP/s of an n×n matmul, best of ``reps``: fp32, or bf16 inputs with fp32 sums."""
    import jax
    import jax.numpy as jnp
    import torch

    a = np.random.default_rng(0).normal(size=(n, n)).astype(np.float32)
    ta, ja = torch.from_numpy(a), jnp.asarray(a)
    f = jax.jit(lambda x: x @ x)
    if dtype == "bfloat16":  # what a bf16 layer runs: bf16 operands, fp32 accumulation
        ta, ja = ta.to(torch.bfloat16), ja.astype(jnp.bfloat16)
        f = jax.jit(lambda x: jnp.matmul(x, x, preferred_element_type=jnp.float32))
    f(ja).block_until_ready()
    out = []
    for fn in (lambda: torch.mm(ta, ta), lambda: f(ja).block_until_ready()):
        fn()
        best = min(_timed(fn) for _ in range(reps))
        out.append(2 * n**3 / best / 1e9)
    return out[0], out[1]


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process so far, all threads."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def model_flops(cfg, params: int) -> float:
    """Train FLOPs per step: 6 · params · tokens plus the attention products (QKᵀ and PV, ×3 for fwd + bwd)."""
    T, H, W = (n // p for n, p in zip(cfg["latent"], PATCH, strict=True))
    S, B, C = H * W, cfg["batch"], cfg["hidden"]
    tokens = B * T * S
    attn = 12 * B * C * (T * S * S + S * T * T + T * S * L) * cfg["depth"]
    return 6 * params * tokens + attn


def bench(name: str, rounds: int, steps: int, threads: int, dtype: str = "float32") -> dict:
    import torch

    torch.set_num_threads(threads)
    cfg = CONFIGS[name]
    t_step, t_params = torch_step_fn(cfg, dtype)
    j_step, j_params = jax_step_fn(cfg, dtype=dtype)
    s_step, _ = jax_step_fn(cfg, scan_layers=True, dtype=dtype)
    rng = np.random.default_rng(1)
    sides = (("pytorch", t_step), ("vidjax", j_step), ("vidjax_scan", s_step))
    for _, fn in sides:  # warm-up (and compile)
        fn(make_inputs(rng, cfg))
    times = {side: [] for side, _ in sides}
    cpu = {side: 0.0 for side, _ in sides}  # process CPU seconds (user + sys) while that side's steps ran
    for _ in range(rounds):
        for side, fn in sides:
            for _ in range(steps):
                inp = make_inputs(rng, cfg)
                before = _cpu_seconds()
                times[side].append(_timed(lambda fn=fn, inp=inp: fn(inp)))
                cpu[side] += _cpu_seconds() - before
    peak_t, peak_j = matmul_peaks(dtype=dtype)
    flops = model_flops(cfg, j_params)
    med = {k: float(np.median(v)) for k, v in times.items()}
    return dict(config=name, params=(t_params, j_params), flops=flops, median=med,
                spread={k: (float(np.min(v)), float(np.max(v))) for k, v in times.items()},
                cpu={k: cpu[k] / len(times[k]) for k in times}, busy={k: cpu[k] / sum(times[k]) for k in times},
                ratio=med["vidjax"] / med["pytorch"], ratio_scan=med["vidjax_scan"] / med["pytorch"],
                peak=(peak_t, peak_j),
                share=(flops / med["pytorch"] / 1e9 / peak_t, flops / med["vidjax"] / 1e9 / peak_j))


def profile(name: str, scan_layers: bool, steps: int = 3) -> None:
    """Per-op time of the vidjax step (``jax.profiler`` trace), summed by XLA op kind, ms per step."""
    import gzip
    import json
    import tempfile

    import jax

    cfg = CONFIGS[name]
    run, _ = jax_step_fn(cfg, scan_layers=scan_layers)
    rng = np.random.default_rng(2)
    inputs = [make_inputs(rng, cfg) for _ in range(steps)]
    run(inputs[0])  # compile
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp):
            for inp in inputs:
                run(inp)
        trace = sorted(Path(tmp).rglob("*.trace.json.gz"))[-1]
        events = json.load(gzip.open(trace))
    events = events["traceEvents"] if isinstance(events, dict) else events
    kinds = collections.Counter()
    for e in events:  # XLA ops only (fusions, dots, copies), not the Python or runtime spans
        name_ = e.get("name", "")
        if e.get("ph") == "X" and "dur" in e and not name_.startswith("$") and re.match(r"^[a-z][\w.-]*$", name_):
            kinds[re.sub(r"\.\d+$", "", name_)] += e["dur"]
    print(f"\nvidjax {name} step, scan_layers={scan_layers}: XLA op time by kind, ms per step")
    for kind, us in kinds.most_common(15):
        print(f"  {us / steps / 1000:8.1f}  {kind}")
    if not scan_layers:
        dot_rates(run.hlo(inputs[0]), events, steps)


_DOT = re.compile(r"ROOT %[\w.-]+ = f32\[([\d,]*)\]\S* dot\(%([\w.-]+), %([\w.-]+)\), "
                  r"(?:lhs_batch_dims=\{([\d,]*)\}, )?lhs_contracting_dims=\{([\d,]*)\}"
                  r"(?:, rhs_batch_dims=\{([\d,]*)\})?, rhs_contracting_dims=\{([\d,]*)\}")


def dot_rates(hlo: str, events: list, steps: int) -> None:
    """GFLOP/s of the step's YNNPACK dot fusions by shape, inside the step and the same dot alone (float32).

    Dots XLA leaves to Eigen (a weight gradient contracting the token axis of both operands) run
    asynchronously: their trace spans are only the dispatch, so they are counted, not timed.
    """
    import jax
    import jax.numpy as jnp

    def ints(text):
        return tuple(int(v) for v in text.split(",") if v) if text else ()

    comps = dict(re.findall(r"^%([\w.-]+) \(.*?\) -> .*?\{\n(.*?)\n\}", hlo, re.M | re.S))
    calls = dict(re.findall(r"%([\w.-]+) = [^\n]*?calls=%([\w.-]+)", hlo))
    spans = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and "dur" in e and e.get("name", "").startswith("ynn_fusion"):
            spans[e["name"]] += e["dur"] / steps
    by_dot = collections.defaultdict(lambda: [0.0, 0, 0])  # (lhs, rhs, dims) -> [us per step, FLOP per step, FLOP]
    for op, us in spans.items():
        body = comps.get(calls.get(op, ""), "")
        m = _DOT.search(body)
        if not m:
            continue
        shapes = dict(re.findall(r"%([\w.-]+) = f32\[([\d,]*)\]\S* parameter", body))
        lhs, rhs = ints(shapes.get(m.group(2), "")), ints(shapes.get(m.group(3), ""))
        dims = ((ints(m.group(5)), ints(m.group(7))), (ints(m.group(4)), ints(m.group(6))))
        flop = 2 * math.prod(ints(m.group(1))) * math.prod(lhs[i] for i in dims[0][0])
        row = by_dot[(lhs, rhs, dims)]
        row[0], row[1], row[2] = row[0] + us, row[1] + flop, flop
    every = dict(re.findall(r"%([\w.-]+) = f32\[([\d,]*)\]", hlo))  # instruction names are unique in a module
    eigen = 0
    for out, lhs, contract in re.findall(r"^\s*%dot[\w.-]* = f32\[([\d,]*)\]\S* dot\(%([\w.-]+), %[\w.-]+\), "
                                         r"(?:lhs_batch_dims=\{[\d,]*\}, )?lhs_contracting_dims=\{([\d,]*)\}",
                                         hlo, re.M):  # unfused dots (not a fusion's ROOT)
        eigen += 2 * math.prod(ints(out)) * math.prod(ints(every[lhs])[i] for i in ints(contract))
    print(f"\nYNNPACK dots by shape, GFLOP/s in the step and alone (median of 10); plus {eigen / 1e9:.1f} GFLOP per "
          "step of Eigen dots, which run asynchronously, beside the others")
    print("  ms/step  in step  alone  lhs x rhs")
    rng = np.random.default_rng(0)
    for (lhs, rhs, dims), (us, flop, one) in sorted(by_dot.items(), key=lambda kv: -kv[1][0])[:12]:
        a, b = (jnp.asarray(rng.normal(size=shape).astype(np.float32)) for shape in (lhs, rhs))
        f = jax.jit(lambda a, b, dims=dims: jax.lax.dot_general(a, b, dims))
        f(a, b).block_until_ready()
        alone = float(np.median([_timed(lambda f=f, a=a, b=b: f(a, b).block_until_ready()) for _ in range(10)]))
        print(f"  {us / 1000:7.1f}  {flop / us / 1e3:7.0f}  {one / alone / 1e9:5.0f}  {list(lhs)} x {list(rhs)}")


# the attention's batched product forms: (einsum, lhs is the [n, S, S] probabilities?) for n products of S × S × D
PRODUCTS = {"QKᵀ": ("bqd,bkd->bqk", False), "PV": ("bqk,bkd->bqd", True), "PᵀdO": ("bqk,bqd->bkd", True)}


def product_operands(rng, n: int, s: int, d: int) -> dict[str, tuple[str, np.ndarray, np.ndarray]]:
    """Per form of ``PRODUCTS``: (einsum, lhs, rhs) as float32 arrays, lhs [n, S, S] or [n, S, D], rhs [n, S, D]."""
    p = rng.normal(size=(n, s, s)).astype(np.float32)
    a = rng.normal(size=(n, s, d)).astype(np.float32)
    return {name: (eq, p if on_probs else a, a) for name, (eq, on_probs) in PRODUCTS.items()}


def attention_vs_torch(name: str, rounds: int = 3, reps: int = 5, threads: int = 0) -> None:
    """One spatial self-attention of the config, forward + backward, and its batched products alone, both sides.

    Shapes as in the step: q, k, v of B·T frames × H heads × S tokens × D channels. PyTorch runs the reference's
    attention (``ref_attention``, as in ``RefAttention``: scaled QKᵀ, float32 softmax, PV, autograd); vidjax
    ``xla_attention`` (heads-major copies and the written-out backward). Then the three product forms the backward
    holds (QKᵀ, PV and the transposed-left PᵀdO), as ``torch.einsum`` (a ``bmm``) and as a jitted ``jnp.einsum``;
    PyTorch once more on one thread, to show what spreading the B·T·H products over the cores is worth. Medians of
    ``rounds`` × ``reps`` calls, the sides alternating round by round (not call by call: each framework's threads
    spin for a while after a call, and would slow the other's next call).
    """
    import jax
    import jax.numpy as jnp
    import torch
    from test_interop import ref_attention  # the reference's attention, as RefAttention computes it

    from vidjax.models.layers import xla_attention

    cfg = CONFIGS[name]
    T, Hs, Ws = (n // p for n, p in zip(cfg["latent"], PATCH, strict=True))
    B, S, H, D = cfg["batch"], Hs * Ws, cfg["heads"], cfg["hidden"] // cfg["heads"]
    n = B * T * H
    rng = np.random.default_rng(0)
    q, k, v, g = (rng.normal(size=(B, T, S, H, D)).astype(np.float32) for _ in range(4))

    def grad_fn(q, k, v, g):
        return jax.grad(lambda q, k, v: jnp.sum(xla_attention(q, k, v) * g), argnums=(0, 1, 2))(q, k, v)

    jgrad = jax.jit(grad_fn)
    jargs = [jnp.asarray(a) for a in (q, k, v, g)]

    def heads(a):  # [B, T, S, H, D] -> [B·T, H, S, D], the reference's layout
        return torch.from_numpy(a).reshape(B * T, S, H, D).permute(0, 2, 1, 3).contiguous()

    tq, tk, tv, tg = (heads(a) for a in (q, k, v, g))
    for t_ in (tq, tk, tv):
        t_.requires_grad_(True)

    def torch_grad():
        torch.autograd.grad((ref_attention(tq, tk, tv) * tg).sum(), (tq, tk, tv))

    cores = threads or os.cpu_count() or 1

    def medians(*fns: tuple) -> list[float]:  # (function, torch threads) pairs, alternating round by round
        times = [[] for _ in fns]
        for _ in range(rounds):
            for (fn, nthreads), out in zip(fns, times, strict=True):
                torch.set_num_threads(nthreads)
                fn()  # warm-up (and compile)
                out.extend(_timed(fn) for _ in range(reps))
        torch.set_num_threads(cores)
        return [float(np.median(t)) for t in times]

    flop = 3 * 4 * n * S * S * D  # QKᵀ and PV, forward and twice in the backward
    tt, tj = medians((torch_grad, cores), (lambda: jax.block_until_ready(jgrad(*jargs)), cores))
    print(f"\n{name}: one spatial attention, {B * T} frames × {H} heads × {S} tokens × {D} channels, forward + "
          f"backward (median of {rounds} × {reps})\n| side | ms | GFLOP/s |\n|---|---|---|\n"
          f"| PyTorch (reference attention, autograd) | {tt * 1e3:.1f} | {flop / tt / 1e9:.0f} |\n"
          f"| vidjax (`xla_attention`) | {tj * 1e3:.1f} | {flop / tj / 1e9:.0f} |\n| vidjax / PyTorch | "
          f"**{tj / tt:.2f}** | |")

    forms = product_operands(rng, n, S, D)
    print(f"\nthe batched products alone, n = {n} products of {S} × {S} × {D}, GFLOP/s\n"
          f"| product | PyTorch bmm | PyTorch bmm, 1 thread | vidjax (jit einsum) |\n|---|---|---|---|")
    one = 2 * n * S * S * D
    for label, (eq, x, y) in forms.items():
        f = jax.jit(lambda x, y, eq=eq: jnp.einsum(eq, x, y))
        jx, jy, tx, ty = jnp.asarray(x), jnp.asarray(y), torch.from_numpy(x), torch.from_numpy(y)
        def on_torch(eq=eq, tx=tx, ty=ty):
            return torch.einsum(eq, tx, ty)

        rates = [one / t / 1e9 for t in medians((on_torch, cores), (on_torch, 1),
                                                 (lambda f=f, jx=jx, jy=jy: f(jx, jy).block_until_ready(), cores))]
        print(f"| {label} | {rates[0]:.0f} | {rates[1]:.0f} | {rates[2]:.0f} |")


def main() -> None:
    from vidjax.cli import preloaded_allocator, tune_memory

    tune_memory()  # as every vidjax command does (both sides share the process, so both get it)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", choices=sorted(CONFIGS), action="append")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=6, help="timed steps per side per round")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="compute dtype on both sides (bfloat16: fp32 weights, bf16 matmuls)")
    p.add_argument("--profile", action="store_true", help="only print the vidjax step's per-op time by kind, with "
                   "the blocks in one scan and unrolled")
    p.add_argument("--attention", action="store_true", help="only compare one spatial attention (forward + "
                   "backward) and its batched products, PyTorch against vidjax")
    a = p.parse_args()
    if a.attention:
        for name in a.config or ["mid", "xl"]:
            attention_vs_torch(name, threads=a.threads)
        return
    if a.profile:
        for name in a.config or ["mid"]:
            for scan_layers in (True, False):
                profile(name, scan_layers)
        return
    threads = a.threads or os.cpu_count() or 1
    print(f"compute dtype: {a.dtype}; host allocator: {preloaded_allocator() or 'glibc'} "
          f"(VIDJAX_MALLOC={os.environ.get('VIDJAX_MALLOC', 'auto')})")
    print("| config | params (torch / vidjax) | TFLOP/step | PyTorch s/step (min–max) | vidjax s/step (min–max) | "
          "vidjax / PyTorch | share of matmul peak (PyTorch / vidjax) | vidjax with scan_layers=True: s/step, "
          "/ PyTorch |\n|---|---|---|---|---|---|---|---|")
    cpu_lines = []
    for name in a.config or ["mid", "xl"]:
        r = bench(name, a.rounds, a.steps, threads, a.dtype)
        cpu_lines.append(f"{name}: " + "; ".join(f"{side} {r['cpu'][side]:.2f} CPU-s a step, "
                                                 f"{r['busy'][side]:.2f} cores"
                                                 for side in ("pytorch", "vidjax", "vidjax_scan")))
        (tp, jp), (ts, js) = r["params"], r["share"]
        print(f"| {name} | {tp:,} / {jp:,} | {r['flops'] / 1e12:.3f} | {r['median']['pytorch']:.3f} "
              f"({r['spread']['pytorch'][0]:.3f}–{r['spread']['pytorch'][1]:.3f}) | {r['median']['vidjax']:.3f} "
              f"({r['spread']['vidjax'][0]:.3f}–{r['spread']['vidjax'][1]:.3f}) | **{r['ratio']:.2f}** | "
              f"{ts:.0%} / {js:.0%} (peaks {r['peak'][0]:.0f} / {r['peak'][1]:.0f} GFLOP/s) | "
              f"{r['median']['vidjax_scan']:.3f}, {r['ratio_scan']:.2f} |", flush=True)
    print("\nCPU time (user + system, all threads) per timed step, and the cores it kept busy on average:")
    print("\n".join(cpu_lines))


if __name__ == "__main__":
    main()
