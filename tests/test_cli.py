"""The command line and run folders: train, resume, load_run, evaluate, demo, and clear errors."""
import json

import pytest
import torch

import pyro_groupvae
from pyro_groupvae.cli import main
from pyro_groupvae.infer import CheckpointError


def test_train_resume_and_load_run(tmp_path):
    out = tmp_path / "run"
    args = ["train", "mlvae", "--epochs", "1", "--out", str(out), "--group-size", "8", "--batch-groups", "32",
            "--hidden", "64", "--no-progress"]
    assert main(args) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"] == "mlvae" and cfg["options"]["group_size"] == 8
    assert main(["train", "mlvae", "--epochs", "2", "--out", str(out), "--resume", "--no-progress"]) == 0
    assert (out / "history.csv").read_text().strip().count("\n") == 2
    model = pyro_groupvae.load_run(out).model
    x = pyro_groupvae.data.load_dataset("mnist", "test").x[:6]
    post = model.encode(x, torch.tensor([0, 0, 0, 1, 1, 1]))
    content, style = post["content"], post["style"]
    assert content.mean.shape == (6, 10) and style.mean.shape == (6, 10)
    assert model.decode(content.mean, style.mean).shape == (6, 1, 28, 28)


def test_cli_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"model": "mlvae"}))
    (tmp_path / "checkpoint.pt").write_bytes(b"\x00garbage")
    assert main(["evaluate", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "corrupt" in err and "Traceback" not in err
    with pytest.raises(CheckpointError):
        pyro_groupvae.load_run(tmp_path)
    assert main(["evaluate", str(tmp_path / "nowhere")]) == 2


def test_demo_quick(tmp_path):
    """The README's main job, in smoke size: trains ML-VAE and the VAE, evaluates, writes the report."""
    assert main(["demo", "--quick", "--epochs", "1", "--out", str(tmp_path)]) == 0
    run = tmp_path / "mlvae"
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["classification"]["content_accuracy_k1"] <= 1.0
    assert "baseline" in metrics and "cost" in metrics
    report = (run / "report.md").read_text()
    for fig in ("swapping_strategy1", "swapping_strategy2", "interpolation", "generation", "accumulation",
                "classification_accuracy", "inference_cost"):
        assert (run / "figures" / f"{fig}.png").stat().st_size > 1000
        assert f"figures/{fig}.png" in report


def test_evaluate_a_run_folder_written_by_fit(tmp_path):
    """The README's sequence: Python ``fit(..., out_dir=...)``, then ``pyro-groupvae evaluate`` on that folder."""
    from pyro_groupvae.data import GroupBatchSampler, load_dataset
    from pyro_groupvae.infer import fit
    from pyro_groupvae.models import MLVAE

    train = load_dataset("mnist", "train").subset(torch.arange(512))
    fit(MLVAE(content_dim=4, style_dim=4, hidden=32), train, GroupBatchSampler(train.y, batch_groups=8, group_size=8),
        epochs=1, out_dir=tmp_path / "mlvae", progress=False)
    run = pyro_groupvae.load_run(tmp_path / "mlvae")
    assert run.config["model"] == "mlvae" and run.config["dataset"] == "mnist" and len(run.history) == 1
    assert not hasattr(run.model, "run_config")  # nothing is attached to the model any more
    assert main(["evaluate", str(tmp_path / "mlvae"), "--quick"]) == 0
    metrics = json.loads((tmp_path / "mlvae" / "metrics.json").read_text())
    assert 0.0 <= metrics["classification"]["content_accuracy_k1"] <= 1.0
