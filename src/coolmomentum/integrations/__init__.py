"""Glue for the trainers users already run.

- :mod:`coolmomentum.integrations.timm`: importing it registers ``"coolmomentum"`` in timm's
  optimizer registry (``timm.optim.create_optimizer_v2(model, opt="coolmomentum", ...)``,
  ``train.py --device-modules coolmomentum.integrations.timm --opt coolmomentum``).

PyTorch Lightning and the Hugging Face ``Trainer`` take a ``torch.optim`` optimizer as it is
and need no glue; the recipes are in the documentation (``docs/integrations.md``).
"""
