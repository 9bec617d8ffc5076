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
    model = pyro_groupvae.load_run(out)
    x = pyro_groupvae.data.load_dataset("mnist", "test").x[:6]
    content, style = model.encode(x, torch.tensor([0, 0, 0, 1, 1, 1]))
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
