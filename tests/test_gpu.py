"""CUDA paths: device choice, mixed precision (bf16, or fp16 with a GradScaler updated once per step),
data kept on the device, GAN steps. Marked ``gpu``; skipped where CUDA is absent."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fewlabel.models.encoder import create_encoder
from fewlabel.training.batches import TensorBatches
from fewlabel.training.loop import Loop, LoopConfig, Task, fit, select_device

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


class _Toy(Task):
    def __init__(self) -> None:
        torch.manual_seed(0)
        enc = create_encoder("convnet", in_channels=1, width=4, depth=2)
        self.model = nn.Sequential(enc, nn.Linear(enc.out_features, 2))
        self.dtypes: set[torch.dtype] = set()

    def modules(self) -> nn.Module:
        return self.model

    def optimizers(self) -> list[torch.optim.Optimizer]:
        self.opt = torch.optim.Adam(self.model.parameters(), 1e-2)
        return [self.opt]

    def training_step(self, batch, ctx: Loop):
        x, y = batch
        assert x.device.type == "cuda"
        with ctx.autocast():
            logits = self.model(x)
        self.dtypes.add(logits.dtype)
        loss = nn.functional.cross_entropy(logits.float(), y)
        ctx.backward_step(loss, self.opt)
        return {"loss": loss.detach()}  # a tensor: read once per epoch, no per-step sync


def _toy_data(n: int = 32):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 2
    x = torch.randn(n, 1, 16, 16, generator=g) + y.view(-1, 1, 1, 1).float()
    return x, y


def test_auto_device_is_cuda_and_amp_runs():
    assert select_device("auto").type == "cuda"
    x, y = _toy_data()
    task = _Toy()
    result = fit(task, TensorBatches(x, y, 8, seed=0), None, LoopConfig(max_epochs=3))
    assert next(task.model.parameters()).device.type == "cuda"
    assert task.dtypes & {torch.bfloat16, torch.float16}  # autocast was on
    losses = [row["loss"] for row in result.history]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_fp16_scaler_is_updated_once_per_step():
    x, y = _toy_data()
    loop = Loop(LoopConfig())
    loop.amp_dtype = torch.float16
    loop.scaler = torch.amp.GradScaler("cuda", init_scale=2.0**10, growth_interval=1)
    model = nn.Linear(4, 1).cuda()
    opt_a = torch.optim.SGD(model.parameters(), 0.1)
    opt_b = torch.optim.SGD(model.parameters(), 0.1)
    xb = torch.randn(8, 4, device="cuda")
    loop.backward_step(model(xb).pow(2).mean(), opt_a, update_scaler=False)
    assert loop.scaler.get_scale() == 2.0**10  # not yet: the step has a second optimiser
    loop.backward_step(model(xb).pow(2).mean(), opt_b)
    assert loop.scaler.get_scale() == 2.0**11  # one growth for the whole step


def test_finetune_on_cuda_keeps_data_on_device():
    from fewlabel.training.finetune import FinetuneConfig, finetune, predict_proba

    x, y = _toy_data(24)
    torch.manual_seed(0)
    enc = create_encoder("convnet", 1, 2, width=4, depth=2)
    clf, result = finetune(x.numpy(), y.numpy(), x[:8].numpy(), y[:8].numpy(), 2, enc,
                           FinetuneConfig(max_epochs=3, batch_size=8, device="cuda"), seed=0)
    assert next(clf.parameters()).device.type == "cuda" and result.best_epoch is not None
    assert predict_proba(clf, x.numpy(), device="cuda").shape == (24, 2)


def test_gan_pretraining_runs_on_cuda():
    from fewlabel.pretrain.common import PretrainConfig
    from fewlabel.pretrain.gan import pretrain_gan

    images = np.random.default_rng(0).normal(size=(64, 1, 32, 32)).astype(np.float32)
    _, info = pretrain_gan(images, PretrainConfig(steps=6, batch_size=16, log_every=3, progress=False))
    assert info["steps"] == 6 and all(np.isfinite(v) for v in info["final_losses"].values())
