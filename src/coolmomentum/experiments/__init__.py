"""The harness that reproduces the paper's experiments: datasets, models, training and reports.

``coolmomentum.experiments.data`` loads Fashion-MNIST, CIFAR-10/100 (or synthetic data) as uint8
tensors and augments them with batched tensor ops on the device; ``coolmomentum.experiments.models``
builds the networks (CIFAR ResNet-20/32/44/56, ResNet-34, a small convnet). Importing this
package imports nothing heavy; the submodules import torch.
"""
