"""autocode_jax: JAX-native AutoCode4Math (EM over code-integrated and plain math reasoning)."""

__version__ = "0.1.0"
