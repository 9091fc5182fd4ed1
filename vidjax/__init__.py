"""vidjax: Open-Sora-style text-to-video generation in JAX / Flax NNX.

The package is laid out as the pipeline reads:
data -> models (text encoders, VAEs, STDiT/DiT) -> diffusion -> train / sample -> export.
"""

import flax

# Like MaxText and MaxDiffusion: variables carry their logical sharding as metadata,
# and the train step places them explicitly. Eager sharding would demand a mesh
# context just to build a model.
flax.config.update("flax_always_shard_variable", False)

__version__ = "0.1.0"
