"""Cost of inference: amortised encoding vs non-amortised test-time SVI (ML-VAE supplement sec. 2 and 7)."""
from __future__ import annotations

import time

import pyro
import torch

from ..validation import group_index_from_ids


def amortized_elbo(model, x, group_ids=None, num_particles=10):
    """ELBO per observation of ``x`` under the amortised guide, and the seconds it took.

    :returns: ``(elbo_per_observation, seconds)``.
    """
    gi, g = group_index_from_ids(group_ids, x.shape[0], x.device)
    # the model's plate nesting, given, so that Pyro does not guess it (and log "Guessed max_plate_nesting")
    elbo = pyro.infer.Trace_ELBO(num_particles=num_particles, vectorize_particles=True,
                                 max_plate_nesting=getattr(model, "max_plate_nesting", float("inf")))
    t0 = time.perf_counter()
    with model.eval_mode(), torch.no_grad():
        loss = elbo.loss(model.model, model.guide, x, gi, g)
    seconds = time.perf_counter() - t0
    return -loss / x.shape[0], seconds


def inference_cost(model, x, group_ids=None, steps=300, lr=1e-2, progress=False):
    """ELBO on test groups against wall time: amortised (one encoder pass) and test-time SVI (``steps`` steps
    fitting fresh local posteriors with the decoder frozen).

    :returns: dict with ``amortized_elbo``, ``amortized_seconds`` (absent for the SVI baseline, which has no
        encoder), ``svi_curve`` as a list of ``(step, seconds, elbo_per_observation)``, ``svi_final_elbo`` and
        ``svi_seconds``.
    """
    out = {}
    if model.guide_type == "amortized":
        out["amortized_elbo"], out["amortized_seconds"] = amortized_elbo(model, x, group_ids)
    _, _, curve = model.infer_local(x, group_ids, steps=steps, lr=lr, progress=progress)
    out["svi_curve"] = curve
    out["svi_final_elbo"] = curve[-1][2]
    out["svi_seconds"] = curve[-1][1]
    return out
