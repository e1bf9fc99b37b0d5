"""A small regression trained through PyTorch Lightning, as the documented recipe does it.

Imported by ``test_lightning.py``; run as a script (``python _lightning_cases.py OUT``) it
trains the same model with DDP on 2 CPU processes and rank 0 saves the final weights to
``OUT``: Lightning's DDP launcher starts the second process by running this script again.
"""

from __future__ import annotations

import sys
import warnings

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from coolmomentum import CoolMomentum, MomentumCooling

SAMPLES, BATCH, EPOCHS, LR, RHO_0 = 64, 8, 4, 0.05, 0.9
STEPS = EPOCHS * SAMPLES // BATCH

# Lightning's advice for tiny CPU runs (more data-loader workers, a logger) is beside the point.
warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*LightningModule.log.*no logger.*")


def dataset() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(SAMPLES, 5, generator=g, dtype=torch.float64)
    w = torch.randn(5, 1, generator=g, dtype=torch.float64)
    return TensorDataset(x, x @ w + 0.1 * torch.randn(SAMPLES, 1, generator=g, dtype=torch.float64))


class Regression(pl.LightningModule):
    """``optimizer="coolmomentum"``, or ``"sgd-cooled"``: SGD under MomentumCooling."""

    def __init__(self, optimizer: str = "coolmomentum") -> None:
        super().__init__()
        self.optimizer_name = optimizer
        torch.manual_seed(0)
        # float64 from the start (not precision="64-true", which Lightning applies after it has
        # loaded a checkpoint's weights, through float32, into the module).
        layers = torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)
        self.net = torch.nn.Sequential(*layers).double()

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def train_dataloader(self) -> DataLoader:
        # In order, so that a resumed run sees the batches the uninterrupted one saw. Under
        # DDP, Lightning's own sampler would shuffle; this one gives each rank its share of
        # every global batch in order (trainer(use_distributed_sampler=False)).
        data = dataset()
        world = self.trainer.world_size
        sampler = DistributedSampler(data, shuffle=False) if world > 1 else None
        return DataLoader(data, batch_size=BATCH // world, sampler=sampler)

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        total = self.trainer.estimated_stepping_batches  # optimizer steps of the whole run
        if self.optimizer_name == "coolmomentum":
            return CoolMomentum(self.parameters(), lr=LR, rho_0=RHO_0, total_steps=total)
        sgd = torch.optim.SGD(self.parameters(), lr=LR, momentum=RHO_0)
        cooling = MomentumCooling(sgd, total_steps=total)
        return {"optimizer": sgd, "lr_scheduler": {"scheduler": cooling, "interval": "step"}}


def trainer(**kwargs) -> pl.Trainer:  # type: ignore[no-untyped-def]
    options = dict(
        max_epochs=EPOCHS,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    options.update(kwargs)
    return pl.Trainer(**options)


if __name__ == "__main__":
    torch.set_num_threads(1)
    model = Regression()
    run = trainer(devices=2, strategy="ddp", use_distributed_sampler=False)
    run.fit(model)
    if run.is_global_zero:
        stats = run.optimizers[0].stats()[0]
        torch.save({"weights": model.net.state_dict(), "step": stats["step"]}, sys.argv[1])
