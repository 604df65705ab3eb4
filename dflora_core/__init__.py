"""dflora: derivative-free low-rank adaptation of language models."""

__version__ = "0.1.0"
