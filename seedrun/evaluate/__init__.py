"""Evaluation protocols for frozen features, as plain library functions.

* ``seedrun.evaluate.knn``: weighted k-NN (k = 200, 20) and 1-NN (``knn_accuracy``,
  ``knn_variants``);
* ``seedrun.evaluate.features``: feature extraction from uint8 images and an on-disk cache;
* ``seedrun.evaluate.linear``: linear probes on cached features (``MOCO``, ``COMPRESS``);
* ``seedrun.evaluate.semisup``: class-balanced labelled subsets, validation splits, fine-tuning;
* ``seedrun.evaluate.transfer``: transfer data sets (scikit-learn digits, CIFAR, ImageFolder).

Submodules import torch; this package itself imports nothing heavy.
"""
