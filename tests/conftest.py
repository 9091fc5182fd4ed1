"""Shared test setup: 8 fake CPU devices for multi-device tests, and tiny model fixtures."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

import vidjax  # noqa: E402,F401  (sets flax_always_shard_variable=False)


@pytest.fixture(scope="session")
def devices():
    return jax.devices()
