"""The harness that reproduces the paper's experiments: a client of the library.

One job per module, data flowing one way (config -> data, models, optimizers -> loop ->
checkpoint, report; the command line on top):

- ``config``: what defines a run (:class:`~.config.RunConfig`, :class:`~.config.OptimizerSpec`)
- ``presets``, ``presets_imagenet``: the authors' runs and the demo, as data
- ``datasets``: the official files of Fashion-MNIST, CIFAR-10/100 (and synthetic data) as tensors
- ``augment``: normalization and augmentation as batched tensor ops
- ``imagenet``: the ImageFolder pipeline (Pillow in DataLoader workers)
- ``data``: batches on the device for this rank (:class:`~.data.TrainingData`)
- ``models``, ``efficientnet``: the networks
- ``optimizers``: the optimizer of a run, its learning-rate schedule, the TF RMSProp baseline
- ``weight_average``: the moving average of the weights
- ``checkpoint``: a run's directory: config, metrics, checkpoint
- ``loop``: the training loop
- ``report``: the Markdown report and plots
- ``distributed``: who this process is under ``torchrun``
- ``cli``: ``coolmomentum compare | train | report``

Importing this package imports nothing heavy; the submodules import torch.
"""
