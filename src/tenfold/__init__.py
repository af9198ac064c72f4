"""tenfold: extend the context window of a causal LM ten-fold (Zhang et al., 2024), and measure it."""

__version__ = "0.1.0"
