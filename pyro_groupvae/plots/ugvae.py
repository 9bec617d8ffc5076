"""UG-VAE figures: sampling grids (paper figs. 3 and 4) and global/local interpolations (fig. 5).

The image tensors are built here (``*_images``) and drawn with :func:`pyro_groupvae.plots.grids.image_grid`
(``plot_*``, returning a :class:`matplotlib.figure.Figure`). The functions accept
UG-VAE (global ``beta``, local ``z`` around the mean of cluster ``d``) and, for the paper's fig. 4 ablation, the
ML-VAE (global ``content``, local ``style`` around its prior mean 0): both have ``decode(global, local)``.
"""
from __future__ import annotations

import torch

from .grids import image_grid

__all__ = ["sampling_grid_images", "interpolation_images", "plot_sampling_grid", "plot_interpolation"]


def _dims(model):
    """``(global, local)`` latent dimensions: UG-VAE ``(beta, z)``, ML-VAE ``(content, style)``."""
    if model.group_site is None:
        raise ValueError(f"the UG-VAE figures need a model with a group-level latent (UG-VAE, ML-VAE); "
                         f"{model.name!r} has none")
    if model.name == "ugvae":
        return model.global_dim, model.local_dim
    return model.content_dim, model.style_dim


@torch.no_grad()
def sampling_grid_images(model, cluster=None, rows=7, cols=7, beta_range=1.0, z_range=3.0, beta_center=None):
    """Fig. 3: rows move ``beta`` diagonally from ``-beta_range`` to ``+beta_range`` on every dimension;
    columns move ``z`` diagonally from ``mu_z^(d)(beta) - z_range`` to ``mu_z^(d)(beta) + z_range`` (cluster
    ``d = cluster``). For an ML-VAE (``cluster=None``) the local code moves around 0 (the paper's fig. 4 uses
    ``z_range=1``).

    :param beta_center: optional vector added to every row's ``beta`` (default: the prior mean 0, as in the
        paper); e.g. the average posterior mean of random batches when the aggregate posterior is far from
        the prior.
    :returns: mean images ``(rows, cols, C, H, W)``.
    """
    p = next(model.parameters())
    kw = dict(device=p.device, dtype=p.dtype)
    t = torch.linspace(-beta_range, beta_range, rows, **kw)
    s = torch.linspace(-z_range, z_range, cols, **kw)
    global_dim, local_dim = _dims(model)
    beta = t[:, None, None] * torch.ones(rows, cols, global_dim, **kw)
    if beta_center is not None:
        beta = beta + torch.as_tensor(beta_center, **kw)
    if cluster is not None and model.name == "ugvae":
        center = model.prior_components(beta[:, :1])[0][..., int(cluster), :]  # (rows, 1, local_dim)
    else:
        center = torch.zeros(rows, 1, local_dim, **kw)
    z = center + s[None, :, None] * torch.ones(rows, cols, local_dim, **kw)
    return model.decode(beta, z).cpu()


@torch.no_grad()
def interpolation_images(model, beta1, beta2, z1, z2, steps=7):
    """Fig. 5: rows interpolate the global latent from ``beta1`` to ``beta2``, columns the local latent from
    ``z1`` to ``z2`` (all posterior means). :returns: ``(steps, steps, C, H, W)``."""
    p = next(model.parameters())
    dev = p.device
    w = torch.linspace(0, 1, steps, device=dev, dtype=p.dtype)
    beta = (1 - w)[:, None] * beta1.to(dev) + w[:, None] * beta2.to(dev)  # (steps, gd)
    z = (1 - w)[:, None] * z1.to(dev) + w[:, None] * z2.to(dev)  # (steps, ld)
    return model.decode(beta[:, None, :].expand(steps, steps, -1), z[None, :, :].expand(steps, steps, -1)).cpu()


def plot_sampling_grid(model, cluster=None, rows=7, cols=7, beta_range=1.0, z_range=3.0, title=None,
                       beta_center=None):
    """Fig. 3 (fig. 4 for an ML-VAE): the images of :func:`sampling_grid_images` with the latent values as row and
    column labels. :returns: a :class:`~matplotlib.figure.Figure`."""
    images = sampling_grid_images(model, cluster, rows, cols, beta_range, z_range, beta_center)
    pre = "b=" if beta_center is None else "b=c"
    row_labels = [f"{pre}{v:+.1f}" for v in torch.linspace(-beta_range, beta_range, rows).tolist()]
    col_labels = [f"z{v:+.1f}" for v in torch.linspace(-z_range, z_range, cols).tolist()]
    return image_grid(images, title=title or "sampling grid", row_labels=row_labels, col_labels=col_labels,
                      cell_inches=0.6, ylabel="global latent (beta)" if cluster is not None else "global latent",
                      xlabel="local latent (z)" if cluster is not None else "local latent")


def plot_interpolation(model, beta1, beta2, z1, z2, steps=7, title=None, row_names=("b1", "b2"),
                       col_names=("z1", "z2")):
    """Fig. 5: the images of :func:`interpolation_images`, the end points named by ``row_names`` / ``col_names``.
    :returns: a :class:`~matplotlib.figure.Figure`."""
    images = interpolation_images(model, beta1, beta2, z1, z2, steps)
    rl = [row_names[0]] + [""] * (steps - 2) + [row_names[1]]
    cl = [col_names[0]] + [""] * (steps - 2) + [col_names[1]]
    return image_grid(images, title=title or "interpolation", row_labels=rl, col_labels=cl, cell_inches=0.6,
                      ylabel="global latent", xlabel="local latent")
