"""The Lightning training engine: run-folder rules, exact resume (validation ELBO included), checkpoint checks,
samplers against data, data-parallel sharding and plate scaling, other data sources, precision, callbacks."""
import csv
import json
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import pytorch_lightning as pl
import torch
from pyro import poutine

from pyro_groupvae.data import GroupBatchSampler, ImageDataset, RandomBatchSampler
from pyro_groupvae.data.base import as_dataset
from pyro_groupvae.data.lazy import LazyImageDataset
from pyro_groupvae.errors import CheckpointError, ConfigError, InputError, RunFolderError
from pyro_groupvae.infer import fit
from pyro_groupvae.infer.lightning import DataParallelScale, PyroTrainingPlan
from pyro_groupvae.models import MLVAE, VAE


def toy(n_labels=8, per_label=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n_labels).repeat_interleave(per_label)
    return ImageDataset((torch.rand(len(y), 1, 8, 8, generator=g) > 0.5).float(), y, "toy")


def tiny(cls=MLVAE, **kw):
    torch.manual_seed(0)
    kw = {"image_shape": (1, 8, 8), "hidden": 16, "likelihood": "bernoulli", **kw}
    if cls is MLVAE:
        kw.setdefault("content_dim", 2)
        kw.setdefault("style_dim", 2)
    else:
        kw.setdefault("latent_dim", 2)
    return cls(**kw)


def sampler(data, seed=3):
    return GroupBatchSampler(data.y, 2, group_size=4, seed=seed)


def history(path):
    with open(path) as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------------------- exact resume
@pytest.mark.parametrize("cls", [MLVAE, VAE])
def test_resume_is_exact_including_validation_elbo(tmp_path, cls):
    """Kill-and-resume vs uninterrupted: parameters, optimiser moments and every logged number (the validation
    ELBO too: the validation sampler's state is part of the run) agree bit for bit."""
    data, val = toy(), toy(seed=1)

    def run(out, epochs, resume=False):
        m = tiny(cls)
        h = fit(m, data, sampler(data), epochs, seed=1, out_dir=out, val_data=val, val_sampler=sampler(val, 5),
                resume=resume, progress=False)
        return m, h

    straight, h_straight = run(tmp_path / "a", 3)
    run(tmp_path / "b", 1)
    resumed, h_resumed = run(tmp_path / "b", 3, resume=True)
    for (n, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), n
    for ra, rb in zip(h_straight, h_resumed):
        assert (ra["epoch"], ra["train_elbo"], ra["val_elbo"]) == (rb["epoch"], rb["train_elbo"], rb["val_elbo"])
    assert all(math.isfinite(r["val_elbo"]) for r in h_resumed)
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)  # plain tensors and primitives only
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    for sa, sb in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()):
        assert torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    assert [r["val_elbo"] for r in history(tmp_path / "b" / "history.csv")] == \
        [r["val_elbo"] for r in history(tmp_path / "a" / "history.csv")]
    assert (tmp_path / "a" / "best.pt").exists()


def test_history_rebuilt_from_checkpoint_on_resume(tmp_path):
    data = toy()
    fit(tiny(), data, sampler(data), 1, out_dir=tmp_path, progress=False)
    (tmp_path / "history.csv").write_text("epoch,train_elbo,val_elbo,seconds\n")  # a kill during its write
    fit(tiny(), data, sampler(data), 2, out_dir=tmp_path, resume=True, progress=False)
    assert [r["epoch"] for r in history(tmp_path / "history.csv")] == ["1", "2"]


# ------------------------------------------------------------------------------------------- run folders
def test_existing_run_folder_is_not_overwritten_without_asking(tmp_path):
    data = toy()
    fit(tiny(), data, sampler(data), 1, out_dir=tmp_path, progress=False)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(RunFolderError, match="already holds a run"):
        fit(tiny(), data, sampler(data), 1, out_dir=tmp_path, progress=False)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    fit(tiny(), data, sampler(data), 1, out_dir=tmp_path, progress=False, overwrite=True, seed=7)
    assert json.loads((tmp_path / "config.json").read_text())["seed"] == 7


def test_fresh_run_killed_before_first_checkpoint_keeps_old_config(tmp_path):
    data = toy()
    fit(tiny(), data, sampler(data), 1, out_dir=tmp_path, progress=False, seed=0)

    class Kill(pl.Callback):
        def on_train_batch_end(self, *args):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(tiny(), data, sampler(data), 1, out_dir=tmp_path, progress=False, overwrite=True, seed=5,
            callbacks=[Kill()])
    assert json.loads((tmp_path / "config.json").read_text())["seed"] == 0
    assert len(history(tmp_path / "history.csv")) == 1


@pytest.mark.parametrize("epochs", [0, -3, 1.5, True])
def test_bad_epochs_are_refused_up_front(tmp_path, epochs):
    data = toy()
    with pytest.raises(ConfigError, match="epochs"):
        fit(tiny(), data, sampler(data), epochs, out_dir=tmp_path, progress=False)
    assert not (tmp_path / "config.json").exists()


def test_resume_checks_model_config_epochs_and_honours_lr(tmp_path):
    data = toy()
    fit(tiny(), data, sampler(data), 1, out_dir=tmp_path, progress=False, lr=0.5)
    with pytest.raises(CheckpointError, match="hidden"):
        fit(tiny(hidden=32), data, sampler(data), 2, out_dir=tmp_path, resume=True, progress=False)
    with pytest.raises(CheckpointError, match="'mlvae' model, not 'vae'"):
        fit(tiny(VAE), data, sampler(data), 2, out_dir=tmp_path, resume=True, progress=False)
    with pytest.raises(ConfigError, match="already trained 1 epochs"):
        fit(tiny(), data, sampler(data), 1, out_dir=tmp_path, resume=True, progress=False)
    with pytest.warns(UserWarning, match="learning rate changed from 0.5"):
        fit(tiny(), data, sampler(data), 2, out_dir=tmp_path, resume=True, progress=False, lr=1e-3)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["optimizer_states"][0]["param_groups"][0]["lr"] == 1e-3
    assert json.loads((tmp_path / "config.json").read_text())["lr"] == 1e-3


def test_cli_resume_refuses_changed_options_and_honours_lr(tmp_path, capsys):
    from pyro_groupvae.cli import main

    out = str(tmp_path / "run")
    base = ["train", "mlvae", "--out", out, "--group-size", "8", "--batch-groups", "32", "--hidden", "16",
            "--no-progress"]
    assert main(base + ["--epochs", "1"]) == 0
    assert main(base + ["--epochs", "1"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["train", "mlvae", "--out", out, "--resume", "--epochs", "2", "--hidden", "64",
                 "--no-progress"]) == 2
    assert "--hidden 64" in capsys.readouterr().err
    assert main(["train", "mlvae", "--out", out, "--resume", "--epochs", "2", "--lr", "0.0005",
                 "--no-progress"]) == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["lr"] == 0.0005


# ------------------------------------------------------------------------------------------- samplers and data
@pytest.mark.parametrize("n_labels", [50, 400])
def test_sampler_must_index_the_dataset(n_labels):
    data = ImageDataset(torch.zeros(200, 1, 8, 8), torch.arange(200) % 4)
    bad = GroupBatchSampler(torch.arange(n_labels) % 4, 2, group_size=4)
    with pytest.raises(InputError, match=f"indexes {n_labels} rows but the training data has 200"):
        fit(tiny(), data, bad, 1, progress=False)


def test_distributed_sharding_is_disjoint_and_covers_the_global_batches():
    labels = torch.arange(40) % 10
    ref = list(GroupBatchSampler(labels, 4, group_size=2, seed=1, drop_last=False))  # 20 groups: 5 batches of 4
    shards = []
    for rank in range(3):
        s = GroupBatchSampler(labels, 4, group_size=2, seed=1)
        s.set_distributed(rank, 3)
        shards.append(list(s))
        assert len(s) == len(shards[-1]) == 5
    for k, b in enumerate(ref):
        rows = torch.cat([shards[r][k].indices for r in range(3)])
        assert torch.equal(rows, b.indices)  # ranks hold disjoint, contiguous parts of the same global batch
        assert [shards[r][k].num_groups for r in range(3)] == [2, 1, 1]
        for r in range(3):
            sb = shards[r][k]
            assert int(sb.group_index.max()) + 1 == sb.num_groups
    # a last global batch with fewer groups than ranks is dropped on every rank (training) ...
    s = GroupBatchSampler(labels, 3, group_size=2, seed=1)  # 20 groups: 6 batches of 3, then 2
    s.set_distributed(1, 3)
    assert len(s) == len(list(s)) == 6
    # ... or skipped only by the ranks without a group (validation)
    s.set_distributed(1, 3, drop_uneven=False)
    assert len(s) == len(list(s)) == 7
    r = RandomBatchSampler(20, 5, batches_per_step=2)
    r.set_distributed(0, 2)
    assert all(b.num_groups == 1 and len(b.indices) == 5 for b in r)
    # one group per step and 2 ranks: whole batches dealt out in turn (rank 1: batches 1 and 3 of 4)
    ref = list(RandomBatchSampler(20, 5, seed=2))
    r = RandomBatchSampler(20, 5, seed=2)
    r.set_distributed(1, 2)
    assert len(r) == 2 and [b.indices.tolist() for b in r] == [ref[1].indices.tolist(), ref[3].indices.tolist()]


def test_data_parallel_scale_multiplies_batch_sites_only():
    def model():
        pyro.sample("global", dist.Normal(0.0, 1.0))
        with pyro.plate("batch", 3):
            pyro.sample("local", dist.Normal(0.0, 1.0))
        with pyro.plate("data", 100, subsample=torch.arange(4)):
            pyro.sample("sub", dist.Normal(0.0, 1.0))

    with DataParallelScale(4):
        tr = poutine.trace(model).get_trace()
    assert tr.nodes["global"]["scale"] == 1.0
    assert tr.nodes["local"]["scale"] == 4.0
    assert tr.nodes["sub"]["scale"] == 25.0  # 100 / 4 from the plate, no extra factor


def test_user_dataset_tensordataset_numpy_and_lazy_data_train():
    data = toy()
    x, y = data.x.numpy(), data.y.numpy()

    class Folder(torch.utils.data.Dataset):  # a lazy user dataset: (image, group id) items
        reads = 0

        def __len__(self):
            return len(y)

        def __getitem__(self, i):
            Folder.reads += 1
            return x[i], int(y[i])

    lazy = as_dataset(Folder())  # labels read once from the items (no targets attribute)
    assert isinstance(lazy, LazyImageDataset) and torch.equal(lazy.y, data.y)
    assert torch.equal(lazy.x[[3, 1]], data.x[[3, 1]])
    Folder.targets = y  # with labels known, only the batches' images are read
    Folder.reads = 0
    for source in (Folder(), torch.utils.data.TensorDataset(data.x, data.y), (x, y)):
        h = fit(tiny(), source, sampler(data), 1, progress=False)
        assert math.isfinite(h[-1]["train_elbo"])
    assert 0 < Folder.reads <= len(y) + 1  # one epoch read per batch (+ the first item, for the image shape)
    h = fit(tiny(), Folder(), sampler(data), 1, progress=False, num_workers=1)
    assert math.isfinite(h[-1]["train_elbo"])


def test_user_dataset_errors_name_the_problem():
    class Items(torch.utils.data.Dataset):
        def __init__(self, x, y):
            self.x_, self.y_ = x, y

        def __len__(self):
            return len(self.x_)

        def __getitem__(self, i):
            return self.x_[i], self.y_[i]

    x = torch.rand(6, 1, 4, 4)
    with pytest.raises(InputError, match=r"uint8.*x.float\(\) / 255"):
        as_dataset(Items((x * 255).to(torch.uint8), [0] * 6))
    with pytest.raises(InputError, match="labels must be integers"):
        as_dataset(Items(x, [0.5] * 6))
    with pytest.raises(InputError, match="no label"):
        as_dataset([x[i] for i in range(6)])
    with pytest.raises(InputError, match="empty"):
        as_dataset(Items(x[:0], []))


def test_progress_bar_in_a_log_is_redrawn_about_ten_times_per_epoch(capsys):
    data = toy(n_labels=40)
    steps = len(sampler(data))
    assert steps >= 30
    fit(tiny(), data, sampler(data), 1, progress=True)  # captured stdout is not a terminal
    updates = capsys.readouterr().out.count("elbo=")
    assert 5 <= updates <= 2 * (10 + 2), updates  # not one per step (tqdm may draw each refresh twice)


# ------------------------------------------------------------------------------------------- precision, callbacks
def test_bf16_mixed_matches_fp32_on_a_fixed_batch_and_fp16_is_refused():
    from pytorch_lightning.plugins.precision import MixedPrecision

    data = toy()
    m = tiny()
    kw = m.batch_inputs(data, next(iter(sampler(data))), "cpu")
    elbo = pyro.infer.TraceMeanField_ELBO()
    pyro.set_rng_seed(0)
    l32 = elbo.loss(m.model, m.guide, **kw)
    pyro.set_rng_seed(0)
    with MixedPrecision("bf16-mixed", "cpu").forward_context():
        l16 = elbo.loss(m.model, m.guide, **kw)
    assert abs(l16 - l32) < 1e-2 * abs(l32)
    h = fit(m, data, sampler(data), 1, progress=False, precision="bf16-mixed")
    assert math.isfinite(h[-1]["train_elbo"])
    with pytest.raises(ConfigError, match="16-mixed"):
        fit(m, data, sampler(data), 1, progress=False, precision="16-mixed")


def test_early_stopping_lr_scheduler_and_own_trainer(tmp_path):
    data = toy()
    h = fit(tiny(), data, sampler(data), 30, progress=False, lr=1e-9, early_stopping=1)
    assert len(h) < 30  # no improvement at lr 1e-9: stopped early
    m = tiny()
    fit(m, data, sampler(data), 2, progress=False, out_dir=tmp_path,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5))
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(1e-3 * 0.25)
    # the plan in a user's own Trainer
    plan = PyroTrainingPlan(tiny(), data, sampler(data), lr=1e-2)
    pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, num_sanity_val_steps=0).fit(plan)
    assert [r["epoch"] for r in plan.history] == [1, 2] and plan.history[1]["train_elbo"] > -1e4


def test_lazy_image_dataset_trains_through_the_dataloader():
    """The lazy folder/array dataset of pyro_groupvae.data.lazy: batches read their rows only, also in workers."""
    from pyro_groupvae.data.lazy import ArrayReader, LazyImageDataset

    data = toy()
    arr = (data.x.numpy()[:, 0] * 255).astype(np.uint8)  # stored (N, H, W) uint8, read per batch
    lazy = LazyImageDataset(ArrayReader(lambda: arr, arr.shape), data.y)
    h0 = fit(tiny(), lazy, sampler(data), 1, progress=False)
    h1 = fit(tiny(), lazy, sampler(data), 1, progress=False, num_workers=1)
    h2 = fit(tiny(), data, sampler(data), 1, progress=False)
    assert h0[-1]["train_elbo"] == h1[-1]["train_elbo"] == h2[-1]["train_elbo"]  # same images, same numbers


@pytest.mark.parametrize("name", ["ugvae", "nvae"])
def test_data_parallel_scale_with_enumeration_and_labels(name):
    """UG-VAE (TraceEnum_ELBO, nested plates) and N-VAE: every site lies in a batch plate, so the rank-scaled loss
    is exactly world_size times the loss on the same draws."""
    from pyro_groupvae.data import load_dataset
    from pyro_groupvae.models import build_model

    data = load_dataset("mnist", "test").subset(torch.arange(64))
    m = build_model(name)
    batch = next(iter(RandomBatchSampler(len(data), 16, 2 if name == "ugvae" else 1, seed=0)))
    kw = m.batch_inputs(data, batch, "cpu")
    elbo = m.default_elbo()
    pyro.set_rng_seed(0)
    one = elbo.differentiable_loss(m.model, m.guide, **kw)
    pyro.set_rng_seed(0)
    with DataParallelScale(3):
        three = elbo.differentiable_loss(m.model, m.guide, **kw)
    assert torch.allclose(three, 3 * one, rtol=1e-5)


# ------------------------------------------------------------------------------------------- JIT
@pytest.mark.parametrize("cls,elbo", [(MLVAE, None), (VAE, None), (MLVAE, pyro.infer.Trace_ELBO()),
                                      (MLVAE, pyro.infer.TraceEnum_ELBO(max_plate_nesting=2))])
def test_jit_loss_and_gradients_equal_the_plain_elbo_on_a_fixed_batch(cls, elbo):
    """``jit=True`` trains with the JIT version of the ELBO (the model's default by default): on a fixed batch and
    seed its loss and gradients equal the plain ELBO's, before and after compiling (the compile leaves the random
    stream where it was)."""
    from pyro_groupvae.infer.jit import JitTrace_ELBO, JitTraceMeanField_ELBO

    data = toy()
    m = tiny(cls)
    kw = m.batch_inputs(data, next(iter(sampler(data))))
    jit_plan = PyroTrainingPlan(m, data, sampler(data), elbo=elbo, jit=True)
    plain_plan = PyroTrainingPlan(m, data, sampler(data), elbo=elbo)
    want = {None: JitTraceMeanField_ELBO, pyro.infer.Trace_ELBO: JitTrace_ELBO,
            pyro.infer.TraceEnum_ELBO: pyro.infer.JitTraceEnum_ELBO}[elbo if elbo is None else type(elbo)]

    def loss_and_grads(plan):
        pyro.set_rng_seed(4)
        for p in m.parameters():
            p.grad = None
        loss = plan._loss(dict(kw))[0]
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in m.parameters()]

    with m.trusted_inputs(), pyro.validation_enabled(False):
        plain = loss_and_grads(plain_plan)
        for _ in range(2):  # the first call compiles
            jitted = loss_and_grads(jit_plan)
            assert torch.allclose(jitted[0], plain[0], rtol=1e-5), (float(jitted[0]), float(plain[0]))
            for a, b in zip(jitted[1], plain[1]):
                assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
    (trace,) = jit_plan.jit_loss.traces.values()
    assert type(trace[0]) is want


def test_jit_compiles_once_per_batch_shape_and_refuses_elbos_without_jit_version():
    from pyro_groupvae.infer.jit import JitLoss

    data = toy()
    m = tiny()
    loss = JitLoss(m.default_elbo(), m.model, m.guide)
    s = GroupBatchSampler(data.y, 3, group_size=4, seed=0)  # 8 groups: batches of 3, 3 and 2 groups
    with m.trusted_inputs(), pyro.validation_enabled(False):
        for _ in range(2):
            for b in s:
                loss(**m.batch_inputs(data, b)).backward()
    assert len(loss.traces) == 2
    with pytest.raises(ConfigError, match="no JIT version of TraceGraph_ELBO"):
        fit(tiny(), data, sampler(data), 1, elbo=pyro.infer.TraceGraph_ELBO(), jit=True, progress=False)


def test_jit_training_matches_plain_and_resumes_exactly(tmp_path):
    """fit(jit=True): same history as the plain ELBO (float tolerance) and a resumed run equal bit for bit to an
    uninterrupted one, validation ELBO included (validation runs the plain ELBO under no_grad)."""
    data, val = toy(), toy(seed=1)

    def run(out, epochs, resume=False, jit=True):
        m = tiny()
        h = fit(m, data, sampler(data), epochs, seed=1, out_dir=out, val_data=val, val_sampler=sampler(val, 5),
                resume=resume, progress=False, jit=jit, logger="none")
        return m, h

    straight, h_straight = run(tmp_path / "a", 3)
    run(tmp_path / "b", 1)
    resumed, h_resumed = run(tmp_path / "b", 3, resume=True)
    _, h_plain = run(tmp_path / "c", 3, jit=False)
    for (n, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), n
    for ra, rb, rc in zip(h_straight, h_resumed, h_plain):
        assert (ra["train_elbo"], ra["val_elbo"]) == (rb["train_elbo"], rb["val_elbo"])
        assert ra["train_elbo"] == pytest.approx(rc["train_elbo"], rel=1e-5)
        assert ra["val_elbo"] == pytest.approx(rc["val_elbo"], rel=1e-5)
    assert json.loads((tmp_path / "a" / "config.json").read_text())["jit"] is True


def test_jit_checks_every_batch_of_lazy_data():
    """Under JIT the model's per-call checks run only while tracing; batches of lazily read data are still checked."""
    data = toy()
    x = data.x.clone()
    x[data.y == 5] = 0.5  # every row of one group

    class Images(torch.utils.data.Dataset):
        def __len__(self):
            return len(x)

        def __getitem__(self, i):
            return x[i], data.y[i]

    with pytest.raises(InputError, match="not binary"):
        fit(tiny(), Images(), sampler(data), 1, seed=1, progress=False, jit=True)


# ------------------------------------------------------------------------------------------- CPU allocator
_KEPT_CHILD = r"""
import os, sys, torch
sys.path.insert(0, {tests!r})
from test_engine import fit, sampler, tiny, toy
def resident_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
data = toy()
fit(tiny(), data, sampler(data), 1, progress=False, retain_cpu_memory=sys.argv[1] == "1")
before = resident_mb()
grads = [torch.empty(5 << 20).fill_(1.0) for _ in range(5)]  # a step's pattern: five 20 MB gradients, freed
del grads
print(resident_mb() - before)
"""


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="glibc malloc only")
def test_fit_on_cpu_keeps_freed_step_buffers_for_the_next_step(tmp_path):
    """With glibc's defaults the 100 MB a step frees (more than the 64 MB trim threshold glibc's adaptive rule can
    reach) go back to the kernel, and the next step faults them in again (on the dSprites HFVAE step, about 10,000
    page faults and 19 ms of kernel time per step, docs/benchmarks.md); after ``fit`` with ``retain_cpu_memory``
    (the default) they stay resident in the process."""
    import os
    import subprocess
    import sys

    script = tmp_path / "child.py"
    script.write_text(_KEPT_CHILD.format(tests=os.path.dirname(os.path.abspath(__file__))))
    kept = {}
    for retain in ("0", "1"):
        out = subprocess.run([sys.executable, str(script), retain], capture_output=True, text=True, check=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
        kept[retain] = float(out.stdout.strip().splitlines()[-1])
    assert kept["0"] < 40, kept  # MB still resident after the free: given back
    assert kept["1"] > 90, kept  # kept for the next step
