"""Evaluation protocols for frozen features (k-NN; see ``seedrun.evaluate.knn``).

Submodules import torch; this package itself imports nothing heavy.
"""
