"""Semi-supervised data: the labelled mask is explicit (PartlyLabelledDataset), never written into a dataset."""
import pytest
import torch

from pyro_groupvae.data import RandomBatchSampler, load_dataset
from pyro_groupvae.data.labelled import PartlyLabelledDataset, stratified_labelled_mask


def test_stratified_mask_keeps_a_fraction_of_every_class():
    y = torch.arange(10).repeat_interleave(20)
    mask = stratified_labelled_mask(y, 0.1, seed=0)
    assert mask.dtype == torch.bool
    assert torch.equal(torch.bincount(y[mask], minlength=10), torch.full((10,), 2))
    assert torch.equal(mask, stratified_labelled_mask(y, 0.1, seed=0))
    with pytest.raises(ValueError, match="fraction"):
        stratified_labelled_mask(y, 0.0)


def test_partly_labelled_dataset_carries_its_mask():
    data = load_dataset("mnist", "test").subset(torch.arange(30))
    mask = torch.arange(30) % 3 == 0
    view = PartlyLabelledDataset.of(data, mask)
    assert "labelled" not in data.extras and torch.equal(view.x, data.x)
    sub = view.subset(torch.tensor([3, 4, 6]))
    assert sub.labelled.tolist() == [True, False, True] and len(sub) == 3
    assert torch.equal(view.binarized().labelled, mask) and torch.equal(view.to("cpu").labelled, mask)
    with pytest.raises(ValueError, match="bool mask"):
        PartlyLabelledDataset.of(data, torch.ones(29, dtype=torch.bool))


def test_nvae_recipe_passes_the_mask_explicitly():
    """The recipe trains on a PartlyLabelledDataset view (the loaded split is not modified) and the model's
    batch_inputs hand the batch's slice of the mask to model and guide."""
    from pyro_groupvae.runs import get_recipe

    train = load_dataset("mnist", "train")
    train = train.subset(torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:200])
    parts = get_recipe("nvae").build({"labelled_fraction": 0.1, "architecture": "mlp", "hidden": 16,
                                      "shared_dim": 2}, train, None)
    assert "labelled" not in train.extras
    view = parts["train"]
    assert isinstance(view, PartlyLabelledDataset) and int(view.labelled.sum()) < len(train)
    batch = next(iter(RandomBatchSampler(len(view), 50, seed=0)))
    kw = parts["model"].batch_inputs(view, batch, torch.device("cpu"))
    assert torch.equal(kw["labelled"], view.labelled[batch.indices])
    assert "labelled" not in parts["model"].batch_inputs(train, batch, torch.device("cpu"))
