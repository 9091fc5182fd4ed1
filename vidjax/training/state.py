"""Training state as pure pytrees, the optimizer, and the one update rule every task uses.

A task's state is ``{"params", "ema", "opt", "rest"}``: trained parameters, their EMA, optimizer state,
and everything else (frozen weights, buffers such as the null caption ``y_embedding``, counters).
``update`` turns a loss into a new state: gradients (optionally accumulated over micro-batches),
clipped AdamW, EMA, and the non-finite guard that leaves the state untouched when the loss or a
gradient is NaN/Inf, so no checkpoint ever holds diverged weights.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from einops import rearrange
from flax import nnx

from vidjax.parallel import sharding as shd

Tree = Any


def make_optimizer(t) -> optax.GradientTransformation:
    """Clipped AdamW with linear warm-up then cosine decay to ``final_lr_frac`` of ``lr`` (``config.train``)."""
    sched = optax.join_schedules([optax.linear_schedule(0.0, t.lr, max(t.warmup, 1)),
                                  optax.cosine_decay_schedule(t.lr, max(t.steps - t.warmup, 1), t.final_lr_frac)],
                                 [max(t.warmup, 1)])
    return optax.chain(optax.clip_by_global_norm(t.grad_clip),
                       optax.adamw(sched, b1=0.9, b2=t.b2, eps=t.adam_eps, weight_decay=t.weight_decay))


class ModelParts:
    """A model split for pure-function training: the graph, the trained parameters and the rest
    (frozen parameters and buffers), each as a plain nested dict, which is what the optimizer and the
    checkpoints see; plus the logical axis names of both trees for :mod:`vidjax.parallel.sharding`."""

    def __init__(self, model: nnx.Module, trained=nnx.Param):
        self.graphdef, params, rest = nnx.split(model, trained, ...)
        self.templates = [jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), s) for s in (params, rest)]
        self.params, self.rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
        self.param_axes, self.rest_axes = shd.logical_axes(params), shd.logical_axes(rest)

    def merge(self, params: dict, rest: dict | None = None) -> nnx.Module:
        states = []
        for template, values in zip(self.templates, (params, self.rest if rest is None else rest), strict=True):
            state = jax.tree.map(lambda x: x, template)
            nnx.replace_by_pure_dict(state, values)
            states.append(state)
        return nnx.merge(self.graphdef, *states)

    def shardings(self, mesh) -> tuple[Tree, Tree]:
        """(parameter shardings, rest shardings) on ``mesh``: the logical table, then ZeRO-3 on ``fsdp``."""
        return (shd.param_shardings(self.params, self.param_axes, mesh),
                shd.param_shardings(self.rest, self.rest_axes, mesh))


def ema_update(ema: Tree, params: Tree, decay: float) -> Tree:
    return jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, ema, params)


def grads_of(loss_fn: Callable, params: Tree, batch: dict, rng: jax.Array, micro_batches: int = 1):
    """``loss_fn(params, batch, rng) -> (loss, (metrics, extra))`` -> (loss, metrics, extra, grads).

    With ``micro_batches = n > 1`` the batch is cut into n equal slices along its first axis; gradients,
    loss and metrics are their means (so a deterministic loss gives the full batch's gradient), ``extra``
    is the last slice's. Slice k draws its random numbers from ``fold_in(rng, k)``.
    """
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if micro_batches == 1:
        (loss, (metrics, extra)), grads = grad_fn(params, batch, rng)
        return loss, metrics, extra, grads
    micro = jax.tree.map(lambda x: rearrange(x, "(n b) ... -> n b ...", n=micro_batches), batch)

    def body(acc, xs):
        k, mb = xs
        (loss, (metrics, extra)), grads = grad_fn(params, mb, jax.random.fold_in(rng, k))
        acc = jax.tree.map(lambda a, g: a + g / micro_batches, acc, (loss, metrics, grads))
        return acc, extra

    shapes = jax.eval_shape(grad_fn, params, jax.tree.map(lambda x: x[0], micro), rng)
    (loss0, (metrics0, _)), grads0 = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    acc0 = (loss0, metrics0, grads0)
    (loss, metrics, grads), extras = jax.lax.scan(body, acc0, (jnp.arange(micro_batches), micro))
    return loss, metrics, jax.tree.map(lambda e: e[-1], extras), grads


def guarded(new: Tree, old: Tree, loss: jax.Array, grads: Tree) -> tuple[Tree, jax.Array]:
    """``new`` where the loss and every gradient are finite, else ``old``; and that flag (bool scalar)."""
    ok = jnp.isfinite(loss) & jnp.isfinite(optax.global_norm(grads))
    return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old), ok


def update(state: dict, loss_fn: Callable, batch: dict, rng: jax.Array, tx: optax.GradientTransformation, *,
           ema_decay: float, micro_batches: int = 1) -> tuple[dict, dict, Any]:
    """One optimizer step on ``state["params"]`` (and its EMA); returns (state, metrics, extra).

    ``loss_fn(params, batch, rng) -> (loss, (metrics, extra))``. Metrics gain ``loss``, ``grad_norm`` and
    ``nonfinite`` (1.0 when the step was skipped by the guard: params, optimizer state and EMA unchanged).
    """
    loss, metrics, extra, grads = grads_of(loss_fn, state["params"], batch, rng, micro_batches)
    updates, opt = tx.update(grads, state["opt"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    new = dict(state, params=params, opt=opt, ema=ema_update(state["ema"], params, ema_decay))
    new, ok = guarded(new, state, loss, grads)
    metrics = dict(metrics, loss=loss, grad_norm=optax.global_norm(grads), nonfinite=1.0 - ok.astype(jnp.float32))
    return new, metrics, (extra, ok)
