"""Self-supervised preparation: SimCLR (Chen et al. 2020) with the NT-Xent loss, 2D and 3D.

Lightly's shape, written in-house (lightly needs torchvision, see deps-probe.md): the backbone is the
shared encoder, plus a projection MLP and a loss; the projection head is thrown away afterwards
(its output is tuned to the loss, the encoder's pooled features transfer better).

The two views of an image differ by what should NOT change a diagnosis (``SimCLRViews``, built from
``fewlabel.data.augment``'s primitives): random resized crop (area 0.5-1 by default; the object stays
in view), flips and 90-degree turns (cells and cross-sections have no canonical orientation; exact),
a mild blur in half the views and a little Gaussian noise (focus and scanner variation), and a small
intensity scale/shift shared by all channels (exposure). No colour jitter unless
``colour_jitter=True``: stain colour carries meaning in blood and tissue images. The views draw from
their own generator (``make_generator(seed)``), so a seed gives the same run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fewlabel.data import augment
from fewlabel.errors import DataError
from fewlabel.models.encoder import Encoder, create_encoder
from fewlabel.pretrain.common import PretrainConfig, check_images, history_summary, loop_config
from fewlabel.pretrain.figures import save_image_grid
from fewlabel.training.batches import TensorBatches
from fewlabel.training.loop import Loop, Task, fit


class ProjectionHead(nn.Module):
    """SimCLR's MLP: Linear - BatchNorm - ReLU - Linear."""

    def __init__(self, in_features: int, out_features: int = 64, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or max(in_features, out_features)
        self.net = nn.Sequential(nn.Linear(in_features, hidden, bias=False), nn.BatchNorm1d(hidden),
                                 nn.ReLU(), nn.Linear(hidden, out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SimCLR(nn.Module):
    """``encoder`` (the shared body, kept as ``.encoder``) + ``projector``; forward -> projections."""

    def __init__(self, encoder: Encoder, proj_dim: int = 64) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = ProjectionHead(encoder.out_features, proj_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.encoder(x))


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """Normalised-temperature cross-entropy: each view must pick its partner among the other
    2B - 1 views of the batch by cosine similarity."""
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    b = z1.shape[0]
    sim = z @ z.t() / temperature
    sim.fill_diagonal_(float("-inf"))  # a view is not its own partner
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    return F.cross_entropy(sim, target)


class SimCLRViews:
    """A random view of a batch, drawn from ``generator``. ``colour_jitter`` adds per-channel
    intensity changes."""

    def __init__(self, generator: torch.Generator, crop_scale: tuple[float, float] = (0.5, 1.0),
                 colour_jitter: bool = False, blur_p: float = 0.5, noise_std: float = 0.05,
                 intensity: float = 0.1) -> None:
        self.generator = generator
        self.crop_scale = (float(crop_scale[0]), float(crop_scale[1]))
        self.colour_jitter = colour_jitter
        self.blur_p, self.noise_std, self.intensity = blur_p, noise_std, intensity

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        g = self.generator
        x = augment.resized_crop(x, g, self.crop_scale)
        x = augment.dihedral(x, g)
        x = augment.blur(x, g, self.blur_p)
        x = augment.add_noise(x, g, self.noise_std)
        x = augment.scale_shift(x, g, self.intensity, self.intensity)
        if self.colour_jitter and x.shape[1] > 1:
            x = augment.scale_shift(x, g, 0.3, 0.3, per_channel=True)
        return x


class SimCLRTask(Task):
    def __init__(self, model: SimCLR, config: PretrainConfig, make_view: SimCLRViews) -> None:
        self.model, self.config, self.make_view = model, config, make_view
        self._opt: torch.optim.Optimizer | None = None

    def modules(self) -> nn.Module:
        return self.model

    def reseed(self, seed: int) -> None:
        self.make_view.generator.set_state(augment.make_generator(seed).get_state())

    def optimizers(self) -> list[torch.optim.Optimizer]:
        self._opt = torch.optim.AdamW(self.model.parameters(), lr=self.config.learning_rate("ssl"),
                                      weight_decay=self.config.weight_decay)
        return [self._opt]

    def training_step(self, batch: Any, ctx: Loop) -> dict[str, float]:
        x = batch
        with torch.no_grad():
            v1, v2 = self.make_view(x), self.make_view(x)
        with ctx.autocast():
            z = self.model(torch.cat([v1, v2]))  # one pass: BatchNorm sees both views together
        z1, z2 = z.chunk(2)
        loss = nt_xent(z1, z2, self.config.temperature)
        assert self._opt is not None
        ctx.backward_step(loss, self._opt)
        with torch.no_grad():  # share of views whose nearest other view is their partner
            zn = F.normalize(z.float(), dim=1)
            sim = zn @ zn.t()
            sim.fill_diagonal_(float("-inf"))
            b = x.shape[0]
            partner = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(sim.device)
            top1 = (sim.argmax(1) == partner).float().mean()
        return {"loss": loss.detach(), "top1": top1}


def default_encoder(in_channels: int, spatial_dims: int) -> Encoder:
    return create_encoder("convnet", in_channels=in_channels, spatial_dims=spatial_dims, width=16, depth=4)


def pretrain_ssl(
    images: np.ndarray | torch.Tensor,
    config: PretrainConfig | None = None,
    *,
    encoder: Encoder | None = None,
    out_dir: str | Path | None = None,
    checkpoint_path: str | Path | None = None,
) -> tuple[Encoder, dict[str, Any]]:
    """SimCLR on ``images`` (N, C, *spatial) z-scored floats, 2D or 3D; returns the encoder and a
    summary (steps, seconds, final ``loss``/``top1``, per-``log_every`` history). With ``out_dir``:
    ``views.png`` shows originals and two views each, so a user sees what the model was told to
    ignore."""
    config = config or PretrainConfig()
    x = check_images(images)
    if len(x) < 2:
        raise DataError("SimCLR needs at least 2 images (each view must be told apart from another image)")
    torch.manual_seed(config.seed)
    encoder = encoder if encoder is not None else default_encoder(x.shape[1], x.dim() - 2)
    if encoder.in_channels != x.shape[1] or encoder.spatial_dims != x.dim() - 2:
        raise DataError(f"encoder is {encoder.spatial_dims}D with {encoder.in_channels} channel(s); images "
                        f"are {x.dim() - 2}D with {x.shape[1]}")
    model = SimCLR(encoder, config.proj_dim)
    make_view = SimCLRViews(augment.make_generator(config.seed), config.crop_scale,
                            config.colour_jitter)
    if out_dir is not None:  # its own stream: asking for the picture does not change the training
        show = SimCLRViews(augment.make_generator(config.seed, "views figure"), config.crop_scale,
                           config.colour_jitter)
        sample = x[:8]
        grid = torch.cat([sample, show(sample), show(sample)])
        save_image_grid(grid, Path(out_dir) / "views.png", ncol=len(sample))
    # drop_last: a batch of one would leave a view without negatives and BatchNorm without a batch.
    batches = TensorBatches(x, None, config.batch_size, seed=config.seed, min_steps=config.log_every,
                            drop_last=True)
    result = fit(SimCLRTask(model, config, make_view), batches, None,
                 loop_config(config, "pretrain ssl", checkpoint_path))
    return model.encoder.cpu().eval(), history_summary(result)
