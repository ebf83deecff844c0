"""Data: image sets (Fashion-MNIST, CIFAR, digits, ImageFolder trees), augmentations, and epoch sampling.

    datasets     image sets found by name and root, loaded as uint8 tensors
    augment      the paper's augmentations, applied to whole batches on the tensor
    sampling     the order of an epoch and the random stream of a step, seeded for exact resume

Submodules import torch; this package itself imports nothing heavy.
"""
