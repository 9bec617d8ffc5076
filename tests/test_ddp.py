"""Distributed data parallel on CPU (gloo, 2 processes): identical parameters on both ranks, a 2-rank step equal to
a 1-rank step over the same groups, and the CLI end to end. Each test launches 2 Python processes (~30-60 s on a
busy 2-core machine)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pyro
import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from ddp_worker import FirstStepMeanELBO, toy_data, toy_model, toy_sampler  # noqa: E402

ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _run(cmd, cwd):
    res = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    _run([sys.executable, str(HERE / "ddp_worker.py"), str(out), "2"], cwd=out)
    return out


def test_parameters_identical_on_both_ranks_after_training(ddp_run):
    p0 = torch.load(ddp_run / "params_rank0.pt", weights_only=True)
    p1 = torch.load(ddp_run / "params_rank1.pt", weights_only=True)
    init = dict(toy_model().named_parameters())
    assert p0.keys() == p1.keys() == init.keys()
    for n in p0:
        assert torch.equal(p0[n], p1[n]), n
    assert any(not torch.equal(p0[n], init[n].detach()) for n in p0)  # it did train


def test_two_ranks_step_equals_one_rank_step_over_both_halves(ddp_run):
    """Rank 0 holds groups A (2 of the first batch's 4 groups), rank 1 groups B; DDP's averaged gradient of the
    rank-scaled losses must equal the one-process gradient of the whole batch A + B (deterministic ELBO)."""
    data, model = toy_data(), toy_model()
    batch = next(iter(toy_sampler(data)))
    pyro.clear_param_store()
    loss = FirstStepMeanELBO().differentiable_loss(model.model, model.guide, **model.batch_inputs(data, batch, "cpu"))
    loss.backward()
    ref = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert len(ref) >= 10
    for rank in (0, 1):
        g = torch.load(ddp_run / f"grads_rank{rank}.pt", weights_only=True)
        for n, r in ref.items():
            assert torch.allclose(g[n], r, rtol=1e-4, atol=1e-5), (rank, n, (g[n] - r).abs().max())
    # and the halves really differ: each rank alone sees half of the batch
    half = model.batch_inputs(data, batch._replace(indices=batch.indices[:8], group_index=batch.group_index[:8],
                                                     num_groups=2), "cpu")
    model.zero_grad()
    FirstStepMeanELBO().differentiable_loss(model.model, model.guide, **half).backward()
    assert not torch.allclose(model.decoder.net[0].weight.grad, ref["decoder.net.0.weight"], rtol=1e-2)


def test_cli_ddp_train_then_evaluate(tmp_path):
    out = tmp_path / "run"
    _run([sys.executable, "-m", "pyro_groupvae", "train", "mlvae", "--devices", "2", "--strategy", "ddp",
          "--accelerator", "cpu", "--epochs", "1", "--out", str(out), "--group-size", "8", "--batch-groups", "32",
          "--hidden", "32", "--no-progress"], cwd=tmp_path)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["devices"] == 2 and cfg["strategy"] == "ddp"
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["epoch_done"] == 1 and len(state["rng_states"]) == 2
    assert (out / "history.csv").read_text().count("\n") == 2
    from pyro_groupvae.cli import main

    assert main(["evaluate", str(out), "--quick"]) == 0  # in this process: a run written by 2 ranks reads back
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["classification"]["content_accuracy_k1"] <= 1.0
