"""Pallas kernels for factorized spatial-temporal attention, installed as ``vidjax.kernels``.

* ``spatial_attention(q, k, v, *, mask=None)``: flash attention over S for each (b, t, h).
* ``temporal_attention(q, k, v)``: exact attention over T for each (b, s, h).

Both take [B, T, S, H, D] directly, have Pallas backward kernels (custom VJP) and run as
Mosaic on TPU, Triton on CUDA/ROCm and in interpret mode on CPU; under a multi-device mesh the
``attention_impl`` entry points run them per shard (``sharding.per_shard``). Importing this package
registers ``attention_impl`` = "pallas", "auto", "cudnn" and "splash" in
``vidjax.models.layers.ATTENTION_IMPLS``. Design and verification status: kernels/README.md.
"""

from .reference import dot_product_attention, reference_attention
from .select import auto_attention, choose_impl, cudnn_attention, pallas_attention, splash_attention
from .spatial import spatial_attention
from .temporal import temporal_attention

__all__ = [
    "auto_attention",
    "choose_impl",
    "cudnn_attention",
    "dot_product_attention",
    "pallas_attention",
    "reference_attention",
    "spatial_attention",
    "splash_attention",
    "temporal_attention",
]
