"""Pallas kernels for factorized spatial-temporal attention, installed as ``vidjax.kernels``."""
