"""TOP-GAN preparation: train a DCGAN on unlabelled images; keep the discriminator's body.

The discriminator is ``Discriminator(encoder)``: the shared encoder itself plus a one-unit head, so
after training ``discriminator.encoder`` is the encoder file (Rubin et al. 2019 then "change the
last layers" and fine-tune on a few labels; fewlabel does the same with a ``Classifier`` head).
The head reads the whole last map (DCGAN's full-extent final conv), not pooled features: a pooled
head cannot see where objects are, and its generator then puts every object at the same place.

Stabilisation for small pools (tens to thousands of images), and why:
  * DiffAugment (Zhao et al. 2020): the same kinds of random translation (1/8 of a side), cutout
    (half a side) and flips/90-degree turns on real AND fake images before the discriminator, with
    gradients through them (``DiffAugment``, from ``fewlabel.data.augment``'s primitives, drawn from
    its own generator). With few images a discriminator memorises the pool within a few hundred
    steps and the generator's signal collapses; augmenting both sides stops the memorising without
    teaching the generator to produce augmented images. No colour/intensity ops: intensities (phase
    delay, stain) carry the meaning the encoder should learn.
  * spectral norm on the discriminator's convs and head (Miyato et al. 2018) bounds how sharply it
    can react to its input, which keeps the generator's gradients informative. It is a
    parametrization, removed (weights baked in) before export, so the encoder file has plain keys.
  * one-sided label smoothing, real target 0.9 (Salimans et al. 2016): keeps the discriminator
    from growing over-confident on real images; fakes keep target 0 (smoothing them would reward
    the generator for staying where it is).
  * minibatch standard deviation (Karras et al. 2018) as one extra input of the head: a generator
    that makes one image for every z is easy to spot. Watch ``moment_gap`` in the progress line:
    it stays high when the generator collapses anyway (small GANs on CPU budgets often do, for a
    while; the discriminator's features are what fewlabel keeps).
  * R1 gradient penalty on the (augmented) real images, gamma 20 at 64x64, scaled by pixel count
    (Mescheder et al. 2018): spectral norm alone does not bound the discriminator, because the
    encoder's BatchNorm rescales its maps; without it the discriminator wins outright and the
    generator ignores z. It costs a double backward (about 1.4x the step time on CPU). The
    observations behind these settings are in ``docs/gan.md``.
  * DCGAN's Adam(lr 2e-4, betas 0.5/0.999) for both nets, and a linear generator output matched to
    z-scored data (see ``fewlabel.models.gan``).
After training, BatchNorm running statistics are re-estimated on real images only: during GAN
training they also averaged fake batches, which a classifier must not inherit.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fewlabel.data import augment
from fewlabel.errors import DataError
from fewlabel.models.encoder import Encoder, create_encoder
from fewlabel.models.gan import Discriminator, Generator, add_spectral_norm, remove_spectral_norm
from fewlabel.pretrain.common import (
    PretrainConfig,
    check_images,
    history_summary,
    loop_config,
)
from fewlabel.pretrain.figures import save_image_grid
from fewlabel.training.batches import TensorBatches
from fewlabel.training.loop import Loop, Task, fit

GEN_UPSAMPLES = 4  # DCGAN: 4 doublings, so image sides must divide by 16


class DiffAugment:
    """DiffAugment for the discriminator's inputs, drawn from ``rng``: flips/turns and a whole-pixel
    translation (up to 1/8 of a side) in one warp, then a cutout of half of each side."""

    def __init__(self, rng: torch.Generator) -> None:
        self.rng = rng

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        spatial = augment.draw_spatial(x.shape, self.rng, flips=True, rot90=True, shift=0.125)
        return augment.cutout(augment.apply_spatial(x, spatial), self.rng, (0.5, 0.5))


def pixel_w1(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """1-Wasserstein distance between the fakes' and the real batch's pixel values (per channel,
    averaged): does the generator make the data's intensities (background level, bright parts)?
    A GAN's losses do not fall steadily; this does, as the generator learns. A 0-d tensor: the loop
    reads logged values once per epoch, so a GPU step does not wait for it."""
    f = fake.float().transpose(0, 1).flatten(1).sort(dim=1).values
    r = real.float().transpose(0, 1).flatten(1).sort(dim=1).values
    if f.shape != r.shape:  # different batch sizes: compare quantiles
        q = torch.linspace(0, 1, 256, device=f.device)
        f, r = torch.quantile(f, q, dim=1), torch.quantile(r, q, dim=1)
    return (f - r).abs().mean()


def r1_penalty(d_real: torch.Tensor, real_in: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Mean over the batch of |d D(x) / d x|^2 on real inputs (Mescheder et al. 2018), with a graph
    for the discriminator's backward. ``scale`` is the AMP loss scale: the gradient is taken of the
    scaled sum so float16 does not underflow, then unscaled (1.0 without a GradScaler)."""
    (grad,) = torch.autograd.grad(d_real.sum() * scale, real_in, create_graph=True)
    return (grad.float() / scale).pow(2).flatten(1).sum(1).mean()


def moment_gap(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """How far the fakes' per-pixel mean and std (over the batch) are from the real batch's.
    It stays high when the generator collapses onto a few images (the std part), so it is the
    number to watch for mode collapse."""
    f, r = fake.float(), real.float()
    gap = (f.mean(0) - r.mean(0)) ** 2 + (f.std(0) - r.std(0)) ** 2
    return gap.mean()


class GANTask(Task):
    """One step = one discriminator update, then one generator update (two optimisers)."""

    def __init__(self, generator: Generator, discriminator: Discriminator, config: PretrainConfig,
                 out_dir: str | Path | None = None) -> None:
        self.generator, self.discriminator, self.config = generator, discriminator, config
        self.out_dir = Path(out_dir) if out_dir is not None else None
        # ``rng``, not ``generator``: that name is the GAN's generator network here.
        self.rng = augment.make_generator(config.seed)
        self.augment = DiffAugment(self.rng) if config.diff_augment else (lambda x: x)
        # Fixed noise: every sample grid shows the same 16 points of z, so changes are the GAN's.
        g = torch.Generator().manual_seed(config.seed + 1)
        self.fixed_z = torch.randn(16, generator.z_dim, generator=g)
        self._net = nn.ModuleDict({"generator": generator, "discriminator": discriminator})
        self._opts: list[torch.optim.Optimizer] = []

    def modules(self) -> nn.Module:
        return self._net

    def reseed(self, seed: int) -> None:
        self.rng.set_state(augment.make_generator(seed).get_state())

    def optimizers(self) -> list[torch.optim.Optimizer]:
        lr, wd = self.config.learning_rate("gan"), self.config.weight_decay
        self._opts = [
            torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=(0.5, 0.999), weight_decay=wd),
            torch.optim.Adam(self.generator.parameters(), lr=lr, betas=(0.5, 0.999), weight_decay=wd),
        ]
        return self._opts

    def training_step(self, batch: Any, ctx: Loop) -> dict[str, float]:
        real = batch
        opt_d, opt_g = self._opts
        gamma = self.config.r1_gamma * real[0, 0].numel() / 64**2  # per pixel count, see the config
        z = torch.randn(real.shape[0], self.generator.z_dim, device=real.device)
        real_in = self.augment(real)
        if gamma:  # R1 is the gradient w.r.t. the (augmented) real images the discriminator sees
            real_in = real_in.detach().requires_grad_(True)
        with ctx.autocast():
            fake = self.generator(z)
            d_real = self.discriminator(real_in).float()
            d_fake = self.discriminator(self.augment(fake.detach())).float()
        loss_d = (F.binary_cross_entropy_with_logits(d_real, torch.full_like(d_real, self.config.real_label))
                  + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))
        if gamma:
            loss_d = loss_d + 0.5 * gamma * r1_penalty(d_real, real_in, ctx.scaler.get_scale())
        ctx.backward_step(loss_d, opt_d, update_scaler=False)  # the generator's step updates it

        # Generator step: the discriminator is frozen so its gradients are not left behind for the
        # next discriminator update (and backward skips its weights).
        self.discriminator.requires_grad_(False)
        try:
            with ctx.autocast():
                d_gen = self.discriminator(self.augment(fake)).float()
            loss_g = F.binary_cross_entropy_with_logits(d_gen, torch.ones_like(d_gen))
            ctx.backward_step(loss_g, opt_g)
        finally:
            self.discriminator.requires_grad_(True)

        step = ctx.step + 1  # the loop counts this step after it returns
        if self.out_dir is not None and self.config.sample_every and step % self.config.sample_every == 0:
            self.save_samples(self.out_dir / f"samples_step{step:06d}.png")
        d_acc = 0.5 * ((d_real > 0).float().mean() + (d_fake < 0).float().mean()).detach()
        return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach(), "d_acc": d_acc,
                "pixel_w1": pixel_w1(fake.detach(), real), "moment_gap": moment_gap(fake.detach(), real)}

    @torch.no_grad()
    def samples(self, n: int | None = None) -> torch.Tensor:
        """Images from the fixed noise, generator in eval mode (running BatchNorm statistics)."""
        was_training = self.generator.training
        self.generator.eval()
        z = self.fixed_z[:n] if n else self.fixed_z
        out = self.generator(z.to(self.generator.project.weight.device)).float().cpu()
        self.generator.train(was_training)
        return out

    def save_samples(self, path: Path) -> Path:
        return save_image_grid(self.samples(), path)


@torch.no_grad()
def recalibrate_batchnorm(encoder: Encoder, images: torch.Tensor, batch_size: int = 64,
                          max_images: int = 2048) -> None:
    """Re-estimate BatchNorm running statistics as a plain average over real images."""
    bns = [m for m in encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    device = next(encoder.parameters()).device
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the batches below
    was_training = encoder.training
    encoder.train()
    x = images[:max_images]
    for i in range(0, len(x), batch_size):
        chunk = x[i:i + batch_size]
        if len(chunk) > 1 or i == 0:
            encoder(chunk.to(device))
    for bn, m in zip(bns, momenta, strict=True):
        bn.momentum = m
    encoder.train(was_training)


def default_encoder(in_channels: int, spatial_dims: int) -> Encoder:
    """CPU-friendly default: width 16, 4 stages, leaky ReLU as in a DCGAN discriminator."""
    return create_encoder("convnet", in_channels=in_channels, spatial_dims=spatial_dims, width=16,
                          depth=4, act="leaky_relu")


def pretrain_gan(
    images: np.ndarray | torch.Tensor,
    config: PretrainConfig | None = None,
    *,
    encoder: Encoder | None = None,
    out_dir: str | Path | None = None,
    checkpoint_path: str | Path | None = None,
) -> tuple[Encoder, dict[str, Any]]:
    """Train a DCGAN on ``images`` (N, C, H, W) z-scored floats, sides divisible by 16.

    Returns the discriminator's encoder (spectral norm baked in, BatchNorm statistics from real
    images) and a summary: steps, seconds, final losses (``loss_d``, ``loss_g``, ``d_acc``) and the
    per-``log_every`` history. With ``out_dir``: sample grids every ``sample_every`` steps, a grid of
    real images (``real.png``) and the last samples (``samples_final.png``).
    """
    config = config or PretrainConfig()
    x = check_images(images)
    size = tuple(x.shape[2:])
    if any(s % 2**GEN_UPSAMPLES for s in size):
        raise DataError(f"GAN pretraining needs image sides divisible by {2**GEN_UPSAMPLES}, got {size}; "
                        f"use --image-size 64 (or 32, 48, 96 ...)")
    torch.manual_seed(config.seed)
    encoder = encoder if encoder is not None else default_encoder(x.shape[1], x.dim() - 2)
    if encoder.in_channels != x.shape[1]:
        raise DataError(f"encoder expects {encoder.in_channels} channel(s), images have {x.shape[1]}")
    discriminator = Discriminator(encoder, image_size=size, minibatch_std=config.minibatch_std)
    if config.spectral_norm:
        add_spectral_norm(discriminator)
    width = config.gen_width or int(encoder.config.get("width", 16))
    generator = Generator(x.shape[1], size, z_dim=config.z_dim, width=width, upsamples=GEN_UPSAMPLES)
    task = GANTask(generator, discriminator, config, out_dir=out_dir)
    if out_dir is not None:
        save_image_grid(x[:16], Path(out_dir) / "real.png")
    batches = TensorBatches(x, None, config.batch_size, seed=config.seed, min_steps=config.log_every,
                            drop_last=True)
    result = fit(task, batches, None, loop_config(config, "pretrain gan", checkpoint_path))
    if out_dir is not None:
        task.save_samples(Path(out_dir) / "samples_final.png")

    discriminator.eval()
    trained = copy.deepcopy(discriminator.encoder)
    remove_spectral_norm(trained)
    recalibrate_batchnorm(trained, x)
    info = history_summary(result)
    info["generator"] = generator.cpu().eval()  # for tests and notebooks; not saved in the file
    return trained.cpu().eval(), info
