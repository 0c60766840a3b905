"""The one training loop: seeding, early stopping, best-epoch restore, budgets, resume."""

from __future__ import annotations

import torch
from torch import nn

from fewlabel.models.encoder import create_encoder
from fewlabel.training.batches import TensorBatches, sequential_batches
from fewlabel.training.loop import LoopConfig, Task, fit, select_device


class ToyTask(Task):
    def __init__(self, seed: int = 0, val_scores: list[float] | None = None) -> None:
        torch.manual_seed(seed)
        enc = create_encoder("convnet", in_channels=1, width=4, depth=2)
        self.model = nn.Sequential(enc, nn.Linear(enc.out_features, 2))
        self.val_scores = val_scores
        self.calls = 0
        self.reseeds: list[int] = []

    def modules(self) -> nn.Module:
        return self.model

    def optimizers(self) -> list[torch.optim.Optimizer]:
        self.opt = torch.optim.Adam(self.model.parameters(), 1e-2)
        return [self.opt]

    def reseed(self, seed):
        self.reseeds.append(seed)

    def training_step(self, batch, ctx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.model(x), y)
        ctx.backward_step(loss, self.opt)
        return {"loss": float(loss.detach())}

    def validate(self, batches, ctx):
        if self.val_scores is not None:  # scripted validation curve
            score = self.val_scores[min(self.calls, len(self.val_scores) - 1)]
            self.calls += 1
            return {"val_loss": score}
        return {"val_loss": float(sum(nn.functional.cross_entropy(self.model(x), y) for x, y in batches))}


def toy_data(n: int = 32):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = (torch.arange(n) % 2).long()
    x[y == 1] += 1.5
    return x, y


def test_same_seed_same_weights_on_cpu():
    x, y = toy_data()
    states = []
    for _ in range(2):
        task = ToyTask(seed=1)
        fit(task, TensorBatches(x, y, 8, seed=3), None, LoopConfig(max_epochs=2, seed=5, device="cpu"))
        states.append(task.model.state_dict())
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k


def test_different_seed_different_weights():
    x, y = toy_data()
    outs = []
    for seed in (1, 2):
        task = ToyTask(seed=seed)
        fit(task, TensorBatches(x, y, 8, seed=seed), None, LoopConfig(max_epochs=1, seed=seed))
        outs.append(task.model[1].weight.detach().clone())
    assert not torch.equal(outs[0], outs[1])


def test_loss_goes_down():
    x, y = toy_data()
    task = ToyTask()
    result = fit(task, TensorBatches(x, y, 8, seed=0), None, LoopConfig(max_epochs=6))
    assert result.history[-1]["loss"] < result.history[0]["loss"] * 0.7


def test_early_stopping_and_best_epoch_restored():
    x, y = toy_data()
    # validation improves until epoch 2, then gets worse: stop after patience=2 more epochs
    task = ToyTask(val_scores=[5.0, 4.0, 3.0, 3.5, 3.6, 3.7, 3.8])
    snapshots = {}

    def remember(epoch, ctx):
        snapshots[epoch] = {k: v.clone() for k, v in task.model.state_dict().items()}

    task.on_epoch_end = remember
    result = fit(task, TensorBatches(x, y, 8, seed=0), [(x, y)], LoopConfig(max_epochs=20, patience=2))
    assert result.stopped_because == "early_stopping"
    assert result.best_epoch == 2 and result.epochs == 5
    for k, v in task.model.state_dict().items():
        assert torch.equal(v, snapshots[2][k]), k  # best epoch's weights, not the last


def test_step_budget_and_time_budget():
    x, y = toy_data()
    r = fit(ToyTask(), TensorBatches(x, y, 8, seed=0), None, LoopConfig(max_epochs=100, max_steps=5))
    assert r.steps == 5 and r.stopped_because == "max_steps"
    r = fit(ToyTask(), TensorBatches(x, y, 8, seed=0), None, LoopConfig(max_epochs=10**6, time_budget_s=0.3))
    assert r.stopped_because == "time_budget" and r.epochs < 10**6  # stopped by the budget, not the epochs


def test_checkpoint_resume_continues_to_budget(tmp_path):
    x, y = toy_data()
    ckpt = str(tmp_path / "ck.pt")
    first_task = ToyTask()
    first = fit(first_task, TensorBatches(x, y, 8, seed=0), None,
                LoopConfig(max_epochs=3, checkpoint_path=ckpt))
    assert first.steps == 12
    resumed_task = ToyTask(seed=99)  # different init: resume must overwrite it with the checkpoint
    second = fit(resumed_task, TensorBatches(x, y, 8, seed=0), None,
                 LoopConfig(max_epochs=5, checkpoint_path=ckpt))
    assert second.resumed and second.steps == 20 and len(second.history) == 5
    # The task's own streams (augmentation) restart fresh on resume, as the global one does.
    assert first_task.reseeds == [] and resumed_task.reseeds == [0 + 7919 * (3 + 1)]


def test_tensor_batches_min_steps_and_determinism():
    x, y = toy_data(6)
    b = TensorBatches(x, y, 4, seed=0, min_steps=5)
    assert len(b) == 5 and len(list(b)) == 5
    first = [yy.tolist() for _, yy in TensorBatches(x, y, 4, seed=7)]
    again = [yy.tolist() for _, yy in TensorBatches(x, y, 4, seed=7)]
    assert first == again
    assert sum(len(xx) for xx in sequential_batches(x, None, 4)) == 6


def test_device_auto_is_cpu_here_or_cuda():
    assert select_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_unusable_device_or_no_epochs_is_a_fewlabel_error():
    """``--device cuda`` on a machine without CUDA, a typo, or ``--max-epochs 0`` (which trained
    nothing and saved the untrained model) are user errors: one line, no torch traceback."""
    import numpy as np
    import pytest

    from fewlabel.errors import FewlabelError
    from fewlabel.training.finetune import FinetuneConfig, finetune

    with pytest.raises(FewlabelError, match="gpu"):
        select_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(FewlabelError, match="CUDA"):
            select_device("cuda")
    x, y = np.zeros((4, 1, 8, 8), np.float32), np.array([0, 1, 0, 1])
    encoder = create_encoder("convnet", in_channels=1, width=4, depth=2)
    with pytest.raises(FewlabelError, match="max_epochs"):
        finetune(x, y, None, None, 2, encoder, FinetuneConfig(max_epochs=0, progress=False))


def test_checkpoints_are_written_by_time_and_at_the_end(tmp_path, monkeypatch):
    """Not once per epoch: a few-second epoch would rewrite the file every few seconds."""
    from fewlabel.training import loop as loop_mod

    writes = []
    real = loop_mod._atomic_torch_save
    monkeypatch.setattr(loop_mod, "_atomic_torch_save", lambda obj, path: (writes.append(obj["epoch"]),
                                                                           real(obj, path)))
    x, y = toy_data()
    fit(ToyTask(), TensorBatches(x, y, 8, seed=0), None,
        LoopConfig(max_epochs=4, checkpoint_path=str(tmp_path / "ck.pt"), checkpoint_every_s=3600))
    assert writes == [4]  # only the end of the run
    writes.clear()
    fit(ToyTask(), TensorBatches(x, y, 8, seed=0), None,
        LoopConfig(max_epochs=3, checkpoint_path=str(tmp_path / "ck2.pt"), checkpoint_every_s=0.0))
    assert len(writes) >= 3  # every chance, when the interval is zero


def test_tensor_logs_are_averaged_per_epoch():
    class TensorLogTask(ToyTask):
        def training_step(self, batch, ctx):
            x, y = batch
            loss = nn.functional.cross_entropy(self.model(x), y)
            ctx.backward_step(loss, self.opt)
            return {"loss": loss.detach(), "const": torch.tensor(2.0)}

    x, y = toy_data()
    r = fit(TensorLogTask(), TensorBatches(x, y, 8, seed=0), None, LoopConfig(max_epochs=2))
    assert [row["const"] for row in r.history] == [2.0, 2.0]
    assert all(isinstance(row["loss"], float) and row["loss"] > 0 for row in r.history)
