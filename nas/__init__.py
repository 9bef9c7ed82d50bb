"""nas: hardware-aware neural architecture search in JAX for low-power computer vision."""

__version__ = "0.1.0"
