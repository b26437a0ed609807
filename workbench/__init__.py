"""Mechanistic interpretability workbench: a model's stated reasoning beside its internal computation."""

__version__ = "0.1.0"
