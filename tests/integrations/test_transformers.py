"""CoolMomentum in the Hugging Face ``Trainer``: no double decay, resume continues the schedule.

The model is a tiny BERT built from a config: nothing is downloaded.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: it reads it then

import pytest
import torch
from _installed import require
from _reference import reference_rho

from coolmomentum.schedules import DEFAULT_SCHEDULE

transformers = require("transformers", "transformers")

from coolmomentum import CoolMomentum, MomentumCooling  # noqa: E402

SAMPLES, BATCH, STEPS, LR, RHO_0 = 32, 4, 12, 0.01, 0.9


def tiny_bert() -> transformers.PreTrainedModel:
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=2,
    )
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(config)


class Tokens(torch.utils.data.Dataset):
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 50, (SAMPLES, 8), generator=g)
        self.labels = (self.ids.sum(1) % 2).long()

    def __len__(self) -> int:
        return SAMPLES

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


class Record(transformers.TrainerCallback):
    """The lr after every optimizer step, and the momentum (or first beta) before and after it.

    Before step k, MomentumCooling has set the momentum step k uses; after it, CoolMomentum's
    ``momentum`` mirrors the rho step k used.
    """

    def __init__(self) -> None:
        self.lr: list[float] = []
        self.before: list[float] = []
        self.after: list[float] = []

    @staticmethod
    def momentum(optimizer) -> float:  # type: ignore[no-untyped-def]
        group = optimizer.param_groups[0]
        return group["betas"][0] if "betas" in group else group["momentum"]

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):  # type: ignore[no-untyped-def]
        self.before.append(self.momentum(optimizer))

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):  # type: ignore[no-untyped-def]
        self.lr.append(optimizer.param_groups[0]["lr"])
        self.after.append(self.momentum(optimizer))


def arguments(out, **kwargs) -> transformers.TrainingArguments:  # type: ignore[no-untyped-def]
    options = dict(
        output_dir=str(out),
        max_steps=STEPS,
        per_device_train_batch_size=BATCH,
        lr_scheduler_type="constant",  # CoolMomentum's cooling is the decay: no second one
        use_cpu=True,
        report_to=[],
        logging_strategy="no",
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    options.update(kwargs)
    return transformers.TrainingArguments(**options)


COOLMOMENTUM = dict(lr=LR, rho_0=RHO_0, total_steps=STEPS)


def trainer(model, args, record=None, **kwargs) -> transformers.Trainer:  # type: ignore[no-untyped-def]
    return transformers.Trainer(
        model=model,
        args=args,
        train_dataset=Tokens(),
        callbacks=[record] if record else None,
        **kwargs,
    )


@pytest.mark.parametrize("way", ["optimizers", "optimizer_cls_and_kwargs"])
def test_rho_cools_and_lr_stays_constant(tmp_path, way):
    model, record = tiny_bert(), Record()
    if way == "optimizers":
        passed = dict(optimizers=(CoolMomentum(model.parameters(), **COOLMOMENTUM), None))
    else:
        passed = dict(optimizer_cls_and_kwargs=(CoolMomentum, COOLMOMENTUM))
    run = trainer(model, arguments(tmp_path), record, **passed)
    run.train()
    assert record.lr == [LR] * STEPS
    expected = [reference_rho(k, DEFAULT_SCHEDULE, RHO_0, STEPS) for k in range(STEPS)]
    assert record.after == pytest.approx(expected, abs=1e-12)
    assert run.optimizer.optimizer.stats()[0]["step"] == STEPS  # inside accelerate's wrapper


def test_resume_from_a_trainer_checkpoint_continues_the_schedule(tmp_path):
    args = arguments(tmp_path, save_strategy="steps", save_steps=STEPS // 2)
    whole = tiny_bert()
    trainer(whole, args, optimizer_cls_and_kwargs=(CoolMomentum, COOLMOMENTUM)).train()

    resumed, record = tiny_bert(), Record()
    run = trainer(resumed, args, record, optimizer_cls_and_kwargs=(CoolMomentum, COOLMOMENTUM))
    run.train(resume_from_checkpoint=str(tmp_path / f"checkpoint-{STEPS // 2}"))
    expected = [reference_rho(k, DEFAULT_SCHEDULE, RHO_0, STEPS) for k in range(STEPS // 2, STEPS)]
    assert record.after == pytest.approx(expected, abs=1e-12)  # not restarted from rho_0
    for name, value in resumed.state_dict().items():
        torch.testing.assert_close(value, whole.state_dict()[name], rtol=0, atol=0)


def test_momentum_cooling_drives_adamws_first_beta(tmp_path):
    """Demon AdamW: the Trainer steps MomentumCooling as its scheduler; the lr stays."""
    model, record = tiny_bert(), Record()
    adamw = torch.optim.AdamW(model.parameters(), lr=LR, betas=(RHO_0, 0.999))
    cooling = MomentumCooling(adamw, total_steps=STEPS, schedule="linear-temperature")
    trainer(model, arguments(tmp_path), record, optimizers=(adamw, cooling)).train()
    assert record.lr == [LR] * STEPS
    expected = [reference_rho(k, "linear-temperature", RHO_0, STEPS) for k in range(STEPS)]
    assert record.before == pytest.approx(expected, abs=1e-12)
