"""Data: image sets (Fashion-MNIST, CIFAR, digits, ImageFolder trees), augmentations, and epoch sampling.

    loader       one interface to a split, whichever loader reads it (data.loader: auto|memory|stream)
    datasets     image sets found by name and root, loaded as uint8 tensors (the memory loader)
    augment      the paper's augmentations, applied to whole batches on the tensor (the memory loader)
    sampling     the order of an epoch and the random stream of a step, seeded for exact resume
    formats      ImageFolder trees and the official SEED TSV files: cached file lists, layout checks (torch-free)
    sampler      the stream loader's sharded, resumable batch sampler
    stream       the stream loader: DataLoader workers decoding and augmenting one image at a time
    draws        a view's augmentation parameters, drawn as the official transforms draw them
    pillow_ops   those parameters applied with Pillow's operations on uint8 (the stream loader's CPU path)
    batched_ops  the same augmentations batched on the run's device (data.augment_on: gpu)
    device_decode  a list of JPEGs decoded and cropped on the device in one call

Submodules import torch; this package itself imports nothing heavy.
"""
