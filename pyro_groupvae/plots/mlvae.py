"""ML-VAE figures (Bouchacourt et al. 2018, figs. 4-6; supplement figs. 3-4): swapping, interpolation, generation
and accumulating-evidence reconstructions. Each takes a model with ``encode(x, group_ids) -> (content, style)``
posteriors and ``decode(content, style)``, and returns a :class:`matplotlib.figure.Figure`."""
from __future__ import annotations

import torch

from .grids import image_grid


def _codes(model, x, group_ids, sample, generator=None):
    post = model.encode(x, group_ids)
    content, style = post["content"], post["style"]
    if sample:
        c = content.mean + content.stddev * torch.randn(content.mean.shape, generator=generator).to(x.device)
        s = style.mean + style.stddev * torch.randn(style.mean.shape, generator=generator).to(x.device)
        return c, s
    return content.mean, style.mean


#: what the frame colours of :func:`swapping_grid` mean (its legend)
SWAP_LEGEND = {"green": "input", "blue": "reconstruction", "red": "swap (row's style, column's content)"}


@torch.no_grad()
def swapping_grid(model, x, group_ids=None, title=None, sample=True, seed=0, content=None):
    """Swapping (paper fig. 4): first row and first column show the inputs, second row/column their
    reconstructions; cell ``(i, j)`` decodes the style of row image ``i`` with the content of column image ``j``.

    :param x: ``n`` images; the same images give the rows and the columns.
    :param group_ids: group of each image (strategy 2, accumulating evidence) or ``None`` (strategy 1).
    :param content: content codes to use instead of the encoded ones (e.g. accumulated over a larger group).
    """
    g = torch.Generator().manual_seed(seed)
    c, s = _codes(model, x, group_ids, sample, g)
    if content is not None:
        c = content
    n = x.shape[0]
    swapped = model.decode(c.unsqueeze(0).expand(n, n, -1).reshape(n * n, -1),
                           s.unsqueeze(1).expand(n, n, -1).reshape(n * n, -1)).reshape(n, n, *x.shape[1:])
    recon = model.decode(c, s)
    blank = torch.ones_like(x[0])
    rows = [torch.stack([blank, blank] + list(x))]
    rows.append(torch.stack([blank, blank] + list(recon)))
    for i in range(n):
        rows.append(torch.stack([x[i], recon[i]] + list(swapped[i])))
    grid = torch.stack(rows)
    frames = [[None] * (n + 2) for _ in range(n + 2)]
    for k in range(2, n + 2):
        frames[0][k] = frames[k][0] = "green"
        frames[1][k] = frames[k][1] = "blue"
        for j in range(2, n + 2):
            frames[k][j] = "red"
    return image_grid(grid.cpu(), title or "swapping: rows keep the style, columns keep the content",
                      frames=frames, legend=SWAP_LEGEND,
                      caption="cell (i, j): style of the input on row i, content of the input in column j")


@torch.no_grad()
def interpolation_grid(model, x_a, x_b, steps=7, group_ids=None, title=None):
    """Interpolation (paper fig. 5a): rows interpolate the style from image a to image b, columns the content.

    :param x_a: one image ``(C, H, W)`` (or the first of its group when ``group_ids`` is given).
    :param x_b: the other image.
    """
    x = torch.stack([x_a, x_b])
    c, s = _codes(model, x, group_ids, sample=False)
    t = torch.linspace(0, 1, steps, device=x.device).unsqueeze(-1)
    cs = c[0] * (1 - t) + c[1] * t
    ss = s[0] * (1 - t) + s[1] * t
    imgs = model.decode(cs.unsqueeze(0).expand(steps, steps, -1).reshape(steps * steps, -1),
                        ss.unsqueeze(1).expand(steps, steps, -1).reshape(steps * steps, -1))
    return image_grid(imgs.reshape(steps, steps, *x.shape[1:]).cpu(),
                      title or "interpolation from image a to image b",
                      xlabel="content: a -> b", ylabel="style: a -> b")


@torch.no_grad()
def generation_grid(model, x_groups, num_styles=8, seed=0, title=None):
    """Generation (paper fig. 5b): for each group, the mean of its accumulated content posterior decoded with
    styles drawn from the prior N(0, I); one row per group.

    :param x_groups: list of image tensors, one ``(n_g, C, H, W)`` tensor per group.
    """
    g = torch.Generator().manual_seed(seed)
    rows = []
    styles = torch.randn(num_styles, model.style_dim, generator=g)
    for xg in x_groups:
        content = model.encode(xg, torch.zeros(xg.shape[0], dtype=torch.long, device=xg.device))["content"]
        c = content.mean[:1].expand(num_styles, -1)
        rows.append(model.decode(c, styles.to(xg.device)))
    return image_grid(torch.stack(rows).cpu(), title or "generation: accumulated content with prior styles",
                      xlabel="style drawn from the prior N(0, I)", ylabel="group (accumulated content)")


@torch.no_grad()
def accumulation_grid(model, x, group_ids, title=None):
    """Accumulating evidence (paper fig. 6a): input, reconstruction without grouping (strategy 1) and with the
    group's accumulated content (strategy 2), one row per image."""
    c1, s1 = _codes(model, x, None, sample=False)
    c2, _ = _codes(model, x, group_ids, sample=False)
    grid = torch.stack([x, model.decode(c1, s1), model.decode(c2, s1)], 1)
    return image_grid(grid.cpu(), title or "accumulating evidence", col_labels=["input", "strategy 1", "strategy 2"],
                      caption="strategy 1: content of the image alone; strategy 2: content accumulated over its group")
