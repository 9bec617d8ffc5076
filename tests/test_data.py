"""Tests of the data layer: loaders, IDX reader, image folders and group samplers."""
import gzip
import os
import struct

import numpy as np
import pytest
import torch

from pyro_groupvae.data import (
    DATASETS,
    DIGIT_FAMILIES,
    GroupBatch,
    GroupBatchSampler,
    ImageDataset,
    RandomBatchSampler,
    load_bundled_mnist,
    load_dataset,
    load_image_folder,
    load_mnist_idx,
    load_two_domain,
    load_uci_digits,
    mnist32,
    read_idx,
    single_label_families,
    structured_batches,
    write_idx,
)

# --------------------------------------------------------------------------------------------------------
# bundled MNIST
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("split,n", [("train", 3500), ("val", 500), ("test", 1000), ("all", 5000)])
def test_bundled_mnist_split_sizes_and_stratification(split, n):
    ds = load_bundled_mnist(split)
    assert isinstance(ds, ImageDataset)
    assert ds.name == "mnist"
    assert ds.x.shape == (n, 1, 28, 28) and ds.x.dtype == torch.float32
    assert ds.y.shape == (n,) and ds.y.dtype == torch.int64
    assert torch.bincount(ds.y, minlength=10).tolist() == [n // 10] * 10
    assert 0.0 <= ds.x.min() and ds.x.max() <= 1.0
    assert ds.x.max() == 1.0  # real images reach full intensity


def test_bundled_mnist_splits_disjoint_and_deterministic():
    tr, va, te, al = (load_bundled_mnist(s) for s in ("train", "val", "test", "all"))
    flat = al.x.reshape(len(al), -1)
    # map every split row back to a row of "all" (images are distinct enough for exact matching by hash)
    key = {bytes(r.numpy().tobytes()): i for i, r in enumerate((flat * 255).round().to(torch.uint8))}
    ids = []
    for ds in (tr, va, te):
        rows = (ds.x.reshape(len(ds), -1) * 255).round().to(torch.uint8)
        ids.append({key[bytes(r.numpy().tobytes())] for r in rows})
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert len(key) == 5000  # the 5,000 bundled images are all distinct
    assert len(ids[0] | ids[1] | ids[2]) == 5000
    # independent of the global RNG
    torch.manual_seed(123)
    np.random.seed(123)
    again = load_bundled_mnist("train")
    assert torch.equal(again.x, tr.x) and torch.equal(again.y, tr.y)


def test_bundled_mnist_binarize():
    ds = load_bundled_mnist("val", binarize=True)
    assert set(torch.unique(ds.x).tolist()) <= {0.0, 1.0}
    ds2 = load_dataset("mnist", split="val", binarize=True)
    assert torch.equal(ds.x, ds2.x)


def test_mnist32():
    ds = load_bundled_mnist("val")
    ds32 = mnist32(ds)
    assert ds32.x.shape == (500, 1, 32, 32)
    assert torch.equal(ds32.x[:, :, 2:30, 2:30], ds.x)
    assert ds32.x[:, :, :2].abs().sum() == 0 and ds32.x[:, :, :, 30:].abs().sum() == 0
    assert torch.equal(ds32.y, ds.y)
    assert load_dataset("mnist32", split="val").x.shape == (500, 1, 32, 32)


# --------------------------------------------------------------------------------------------------------
# IDX files
# --------------------------------------------------------------------------------------------------------


def _idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    return header + array.astype(">u1" if code == 0x08 else array.dtype.newbyteorder(">")).tobytes()


def _write(path, data: bytes):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(data)


@pytest.fixture
def idx_arrays():
    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, size=(8, 28, 28)).astype(np.uint8)
    labels = np.array([3, 1, 4, 1, 5, 9, 2, 6], dtype=np.uint8)
    return images, labels


@pytest.mark.parametrize("gz", [False, True])
def test_idx_roundtrip(tmp_path, idx_arrays, gz):
    images, labels = idx_arrays
    suffix = ".gz" if gz else ""
    _write(tmp_path / f"train-images-idx3-ubyte{suffix}", _idx_bytes(images))
    _write(tmp_path / f"train-labels-idx1-ubyte{suffix}", _idx_bytes(labels))
    _write(tmp_path / f"t10k-images-idx3-ubyte{suffix}", _idx_bytes(images[:3]))
    _write(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", _idx_bytes(labels[:3]))
    im = read_idx(tmp_path / f"train-images-idx3-ubyte{suffix}")
    assert im.dtype == np.uint8 and im.shape == (8, 28, 28) and np.array_equal(im, images)
    assert np.array_equal(read_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}"), labels)

    ds = load_mnist_idx(tmp_path, "train")
    assert ds.x.shape == (8, 1, 28, 28) and ds.x.dtype == torch.float32
    assert torch.allclose(ds.x[:, 0], torch.from_numpy(images).float() / 255)
    assert ds.y.tolist() == labels.tolist() and ds.y.dtype == torch.int64
    assert len(load_mnist_idx(tmp_path, "test")) == 3
    assert len(load_mnist_idx(tmp_path, "all")) == 11
    bin_ds = load_mnist_idx(tmp_path, "train", binarize=True)
    assert set(torch.unique(bin_ds.x).tolist()) <= {0.0, 1.0}
    assert len(load_dataset("mnist-idx", split="train", root=tmp_path)) == 8


def test_idx_write_helper_and_other_dtypes(tmp_path):
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7
    write_idx(tmp_path / "a.idx.gz", a)
    b = read_idx(tmp_path / "a.idx.gz")
    assert b.dtype == np.float32 and np.array_equal(a, b)
    c = np.array([-5, 7, 300], dtype=np.int32)
    write_idx(tmp_path / "c.idx", c)
    assert np.array_equal(read_idx(tmp_path / "c.idx"), c)


def test_idx_torchvision_layout(tmp_path, idx_arrays):
    images, labels = idx_arrays
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    _write(raw / "t10k-images-idx3-ubyte.gz", _idx_bytes(images))
    _write(raw / "t10k-labels-idx1-ubyte", _idx_bytes(labels))
    ds = load_mnist_idx(tmp_path, "test", kind="fashion-mnist")
    assert len(ds) == 8 and ds.name == "fashion-mnist"
    assert len(load_dataset("fashion-mnist", split="test", root=tmp_path)) == 8
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        load_mnist_idx(tmp_path, "test", kind="mnist")  # MNIST/raw does not exist


def test_idx_errors(tmp_path, idx_arrays):
    images, labels = idx_arrays
    good = _idx_bytes(images)

    bad_magic = tmp_path / "bad-magic-idx3-ubyte"
    _write(bad_magic, b"\x12\x34" + good[2:])
    with pytest.raises(ValueError, match="magic") as e:
        read_idx(bad_magic)
    assert "bad-magic-idx3-ubyte" in str(e.value)

    bad_code = tmp_path / "bad-code-idx3-ubyte"
    _write(bad_code, good[:2] + b"\x42" + good[3:])
    with pytest.raises(ValueError, match="type code") as e:
        read_idx(bad_code)
    assert "bad-code-idx3-ubyte" in str(e.value)

    truncated = tmp_path / "trunc-idx3-ubyte.gz"
    _write(truncated, good[:-100])
    with pytest.raises(ValueError, match="truncated") as e:
        read_idx(truncated)
    assert "trunc-idx3-ubyte.gz" in str(e.value)

    cut_gz = tmp_path / "cut-idx3-ubyte.gz"
    _write(cut_gz, good)
    cut_gz.write_bytes(cut_gz.read_bytes()[:-20])
    with pytest.raises(ValueError, match="truncated") as e:
        read_idx(cut_gz)
    assert "cut-idx3-ubyte.gz" in str(e.value)

    header_only = tmp_path / "header-idx3-ubyte"
    _write(header_only, good[:6])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(header_only)

    # the MNIST loader insists on uint8 data
    _write(tmp_path / "train-images-idx3-ubyte", _idx_bytes(images.astype(np.int32), code=0x0C))
    _write(tmp_path / "train-labels-idx1-ubyte", _idx_bytes(labels))
    with pytest.raises(ValueError, match="uint8"):
        load_mnist_idx(tmp_path, "train")

    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "nope")


def test_idx_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        load_mnist_idx(tmp_path, "train")
    msg = str(e.value)
    assert "train-images-idx3-ubyte" in msg and os.path.join("MNIST", "raw") in msg
    with pytest.raises(ValueError):
        load_dataset("mnist-idx")  # needs root


def test_idx_download_without_torchvision(tmp_path):
    try:
        import torchvision  # noqa: F401

        pytest.skip("torchvision is installed; the download path would hit the network")
    except ImportError:
        pass
    with pytest.raises(ImportError, match="vision"):
        load_mnist_idx(tmp_path, "train", download=True)


# --------------------------------------------------------------------------------------------------------
# UCI digits and two domains
# --------------------------------------------------------------------------------------------------------


def test_uci_digits():
    sizes = {s: len(load_uci_digits(s)) for s in ("train", "val", "test", "all")}
    assert sizes["all"] == 1797
    assert sizes["train"] + sizes["val"] + sizes["test"] == 1797
    assert abs(sizes["train"] - 0.7 * 1797) < 10 and abs(sizes["val"] - 0.1 * 1797) < 10
    ds = load_uci_digits("train")
    assert ds.x.shape == (sizes["train"], 1, 28, 28) and ds.name == "uci-digits"
    assert 0.0 <= ds.x.min() and ds.x.max() <= 1.0
    counts = torch.bincount(ds.y, minlength=10).float()
    assert (counts / counts.sum() - 0.1).abs().max() < 0.01  # stratified
    small = load_uci_digits("test", size=16)
    assert small.x.shape[1:] == (1, 16, 16)
    orig = load_uci_digits("all", size=8)
    from sklearn.datasets import load_digits

    assert torch.allclose(orig.x[:, 0], torch.from_numpy(load_digits().images).float() / 16)
    assert torch.equal(load_uci_digits("train").x, ds.x)  # deterministic


def test_two_domain():
    ds = load_two_domain("val")
    n_m, n_u = len(load_bundled_mnist("val")), len(load_uci_digits("val"))
    assert ds.name == "mnist+uci" and len(ds) == n_m + n_u
    dom = ds.extras["domain"]
    assert dom.dtype == torch.int64 and dom.shape == (len(ds),)
    assert dom[:n_m].eq(0).all() and dom[n_m:].eq(1).all()
    assert torch.equal(ds.y[n_m:], load_uci_digits("val").y)
    sub = ds.subset(torch.tensor([0, n_m]))
    assert sub.extras["domain"].tolist() == [0, 1]
    assert torch.equal(load_dataset("mnist+uci", split="val").x, ds.x)


def test_registry():
    with pytest.raises(ValueError) as e:
        load_dataset("cifar")
    assert "mnist" in str(e.value) and "uci-digits" in str(e.value)
    assert "dsprites" in DATASETS
    assert load_dataset("uci-digits", split="test", size=12).x.shape[-1] == 12


# --------------------------------------------------------------------------------------------------------
# image folders
# --------------------------------------------------------------------------------------------------------


def _make_folder(root, sizes=((20, 30), (40, 40), (33, 17)), per_group=(3, 2, 4)):
    from PIL import Image

    rng = np.random.RandomState(0)
    for g, n in zip(["carol", "alice", "bob"], per_group):
        d = root / g
        d.mkdir(parents=True)
        for i in range(n):
            w, h = sizes[i % len(sizes)]
            arr = rng.randint(0, 256, size=(h, w, 3)).astype(np.uint8)
            ext = [".png", ".PNG", ".jpg", ".bmp"][i % 4]
            Image.fromarray(arr).save(d / f"img{i}{ext}")
        (d / "notes.txt").write_text("not an image")
    return root


def test_image_folder(tmp_path):
    root = _make_folder(tmp_path / "faces")
    ds = load_image_folder(root, size=16, channels=3)
    assert ds.x.shape == (9, 3, 16, 16) and ds.x.dtype == torch.float32
    x = ds.x[:]  # lazy dataset: indexing reads the images
    assert x.shape == (9, 3, 16, 16) and 0.0 <= x.min() and x.max() <= 1.0
    assert ds.extras["group_names"] == ["alice", "bob", "carol"]
    assert torch.bincount(ds.y).tolist() == [2, 4, 3]
    assert len(ds.extras["paths"]) == 9
    for p, y in zip(ds.extras["paths"], ds.y.tolist()):
        assert os.path.basename(os.path.dirname(p)) == ds.extras["group_names"][y]
    grey = load_dataset("folder", root=root, size=8, channels=1)
    assert grey.x.shape == (9, 1, 8, 8)


def test_image_folder_center_crop(tmp_path):
    from PIL import Image

    arr = np.zeros((10, 30, 3), dtype=np.uint8)
    arr[:, 10:20] = 255  # white centre square, black sides
    (tmp_path / "g").mkdir()
    Image.fromarray(arr).save(tmp_path / "g" / "a.png")
    ds = load_image_folder(tmp_path, size=10)
    assert torch.allclose(ds.x[:], torch.ones(1, 3, 10, 10))


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_image_folder(tmp_path / "missing")
    (tmp_path / "flat").mkdir()
    with pytest.raises(ValueError, match="no sub-folders"):
        load_image_folder(tmp_path / "flat")

    root = _make_folder(tmp_path / "a")
    (root / "zed_empty").mkdir()
    (root / "zed_empty" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match="zed_empty"):
        load_image_folder(root)

    root = _make_folder(tmp_path / "b")
    (root / "bob" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ValueError, match="broken.png"):
        load_image_folder(root, size=8)

    with pytest.raises(ValueError):
        load_image_folder(root, channels=2)
    with pytest.raises(ValueError):
        load_dataset("folder", split="test", root=root)


# --------------------------------------------------------------------------------------------------------
# samplers
# --------------------------------------------------------------------------------------------------------


def _labels():
    # non-contiguous labels, unequal counts: 3 -> 7 rows, 17 -> 12 rows, 1000 -> 5 rows, -2 -> 2 rows
    g = torch.Generator().manual_seed(0)
    y = torch.tensor([3] * 7 + [17] * 12 + [1000] * 5 + [-2] * 2)
    return y[torch.randperm(len(y), generator=g)]


def _check_batch(batch, labels):
    assert isinstance(batch, GroupBatch)
    assert batch.indices.dtype == torch.int64 and batch.group_index.dtype == torch.int64
    assert batch.indices.shape == batch.group_index.shape
    assert torch.equal(torch.unique(batch.group_index), torch.arange(batch.num_groups))
    # groups are contiguous and in order
    assert (batch.group_index[1:] >= batch.group_index[:-1]).all()
    for g in range(batch.num_groups):
        assert len(torch.unique(labels[batch.indices[batch.group_index == g]])) == 1


def test_group_sampler_fixed_size():
    y = _labels()
    s = GroupBatchSampler(y, batch_groups=2, group_size=3, seed=1)
    # groups per epoch: 7//3 + 12//3 + 5//3 + 2//3 = 2 + 4 + 1 + 0 = 7 -> 4 batches
    assert s.num_groups_per_epoch == 7 and len(s) == 4
    for _ in range(3):
        batches = list(s)
        assert len(batches) == len(s)
        used = torch.cat([b.indices for b in batches])
        assert len(torch.unique(used)) == len(used)  # each row at most once per epoch
        assert sum(b.num_groups for b in batches) == 7
        assert [b.num_groups for b in batches] == [2, 2, 2, 1]
        for b in batches:
            _check_batch(b, y)
            assert torch.bincount(b.group_index).eq(3).all()
    s2 = GroupBatchSampler(y, batch_groups=2, group_size=3, drop_last=True)
    assert len(s2) == 3 and len(list(s2)) == 3


def test_group_sampler_variable_and_max():
    y = _labels()
    s = GroupBatchSampler(y, batch_groups=3, seed=0)
    assert len(s) == 2
    batches = list(s)
    assert len(batches) == 2
    used = torch.cat([b.indices for b in batches])
    assert torch.equal(torch.sort(used).values, torch.arange(len(y)))  # covers all rows exactly once
    for b in batches:
        _check_batch(b, y)
    sizes = sorted(int(c) for b in batches for c in torch.bincount(b.group_index))
    assert sizes == [2, 5, 7, 12]

    m = GroupBatchSampler(y, batch_groups=4, max_group_size=4, seed=0)
    seen = set()
    for _ in range(5):
        (b,) = list(m)
        _check_batch(b, y)
        sizes = torch.bincount(b.group_index)
        assert sizes.max() <= 4 and sorted(sizes.tolist()) == [2, 4, 4, 4]
        seen.update(b.indices.tolist())
        assert len(torch.unique(b.indices)) == len(b.indices)
    assert len(seen) > 14  # different random members in different epochs


def test_group_sampler_no_shuffle_order():
    y = torch.tensor([5, 1, 5, 1, 9])
    s = GroupBatchSampler(y, batch_groups=10, shuffle=False)
    (b,) = list(s)
    assert b.indices.tolist() == [1, 3, 0, 2, 4] and b.group_index.tolist() == [0, 0, 1, 1, 2]


def test_group_sampler_reproducible_and_resume():
    y = torch.as_tensor(np.random.RandomState(0).randint(0, 5, size=200))

    def epochs(sampler, n):
        return [[(b.indices.tolist(), b.group_index.tolist()) for b in sampler] for _ in range(n)]

    a = epochs(GroupBatchSampler(y, 4, group_size=3, seed=7), 3)
    torch.manual_seed(999)  # the global RNG does not matter
    b = epochs(GroupBatchSampler(y, 4, group_size=3, seed=7), 3)
    assert a == b
    assert a[0] != a[1]  # a new epoch gives new batches
    assert epochs(GroupBatchSampler(y, 4, group_size=3, seed=8), 1)[0] != a[0]

    s = GroupBatchSampler(y, 4, group_size=3, seed=7)
    epochs(s, 2)
    state = s.state_dict()
    resumed = GroupBatchSampler(y, 4, group_size=3, seed=7)
    resumed.load_state_dict(state)
    assert epochs(resumed, 1)[0] == a[2]
    s.set_epoch(0)
    assert epochs(s, 1)[0] == a[0]


def test_group_sampler_accepts_numpy_and_lists():
    y = np.array([10, 10, 20, 20, 20])
    s = GroupBatchSampler(y, 1, group_size=2)
    assert len(list(s)) == len(s) == 2
    s = GroupBatchSampler([0, 0, 1], 2)
    assert len(list(s)) == 1


def test_group_sampler_errors():
    with pytest.raises(ValueError, match="1-D"):
        GroupBatchSampler(torch.zeros(3, 2, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="integer"):
        GroupBatchSampler(torch.tensor([0.0, 1.0]), 2)
    with pytest.raises(ValueError, match="empty"):
        GroupBatchSampler(torch.tensor([], dtype=torch.long), 2)
    with pytest.raises(ValueError, match="batch_groups"):
        GroupBatchSampler(torch.tensor([0, 1]), 0)
    with pytest.raises(ValueError, match="group_size"):
        GroupBatchSampler(torch.tensor([0, 1]), 1, group_size=0)
    with pytest.raises(ValueError, match="larger than every group"):
        GroupBatchSampler(torch.tensor([0, 0, 1, 1, 1]), 1, group_size=4)
    with pytest.raises(ValueError, match="max_group_size"):
        GroupBatchSampler(torch.tensor([0, 1]), 1, max_group_size=0)


def test_random_batch_sampler():
    s = RandomBatchSampler(103, batch_size=10, batches_per_step=3, seed=0)
    assert s.num_batches == 10 and len(s) == 3
    steps = list(s)
    assert len(steps) == 3
    used = torch.cat([b.indices for b in steps])
    assert len(torch.unique(used)) == 90 and used.max() < 103
    for b in steps:
        assert b.num_groups == 3 and torch.bincount(b.group_index).tolist() == [10, 10, 10]
    keep = RandomBatchSampler(103, batch_size=10, batches_per_step=3, drop_last=False, seed=0)
    assert keep.num_batches == 11 and len(keep) == 4
    ksteps = list(keep)
    assert len(ksteps) == 4
    assert torch.equal(torch.sort(torch.cat([b.indices for b in ksteps])).values, torch.arange(103))
    assert ksteps[-1].num_groups == 2 and torch.bincount(ksteps[-1].group_index).tolist() == [10, 3]

    first = [b.indices.tolist() for b in RandomBatchSampler(50, 5, 2, seed=3)]
    s2 = RandomBatchSampler(50, 5, 2, seed=3)
    list(s2)
    st = s2.state_dict()
    again = RandomBatchSampler(50, 5, 2, seed=3)
    assert [b.indices.tolist() for b in again] == first
    r = RandomBatchSampler(50, 5, 2, seed=3)
    r.load_state_dict(st)
    assert [b.indices.tolist() for b in r] == [b.indices.tolist() for b in s2]
    ordered = list(RandomBatchSampler(10, 5, shuffle=False))
    assert ordered[0].indices.tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError):
        RandomBatchSampler(10, 0)
    with pytest.raises(ValueError):
        RandomBatchSampler(10, 5, batches_per_step=3)  # drop_last: no full step


def test_structured_batches():
    y = load_bundled_mnist("val").y
    batch, fam = structured_batches(y, DIGIT_FAMILIES, batch_size=20, batches_per_family=3, seed=0)
    assert batch.num_groups == 12 and fam.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert batch.indices.shape == (240,)
    families = list(DIGIT_FAMILIES.values())
    for g in range(batch.num_groups):
        rows = batch.indices[batch.group_index == g]
        assert len(rows) == 20 and len(torch.unique(rows)) == 20
        assert set(y[rows].tolist()) <= set(families[int(fam[g])])
    again, _ = structured_batches(y, DIGIT_FAMILIES, 20, 3, seed=0)
    assert torch.equal(again.indices, batch.indices)

    single = single_label_families(torch.tensor([7, 3, 3, 7, 11]))
    assert single == {"3": [3], "7": [7], "11": [11]}
    sb, sf = structured_batches(torch.tensor([7, 3, 3, 7, 11]), single, batch_size=1, batches_per_family=2)
    assert sf.tolist() == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError, match="'11'"):
        structured_batches(torch.tensor([7, 3, 3, 7, 11]), single, batch_size=2, batches_per_family=1)


def test_subset_slices_per_row_extras(tmp_path):
    from PIL import Image

    from pyro_groupvae.data import load_image_folder

    for g in ("a", "b"):
        (tmp_path / g).mkdir()
        for i in range(2):
            Image.new("RGB", (10, 10), (i * 100, 0, 0)).save(tmp_path / g / f"{i}.png")
    ds = load_image_folder(tmp_path, size=8)
    sub = ds.subset([3, 0])
    assert list(sub.extras["paths"]) == [ds.extras["paths"][3], ds.extras["paths"][0]]
    assert sub.extras["group_names"] == ["a", "b"]
