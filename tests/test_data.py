"""The split (sizes, disjointness, determinism, same as random_split), safe loading, clear data errors."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from cifar100_func.config import DatasetConfig
from cifar100_func.data import load_dataset, make_synthetic, read_pickle, split_indices
from cifar100_func.errors import DataError


def test_split_matches_random_split_and_is_disjoint():
    tr, va = split_indices(50000, 5000, 42)
    assert len(tr) == 45000 and len(va) == 5000
    assert len(set(tr.tolist()) | set(va.tolist())) == 50000
    ref = torch.utils.data.random_split(range(50000), [45000, 5000], generator=torch.Generator().manual_seed(42))
    assert tr.tolist() == list(ref[0].indices) and va.tolist() == list(ref[1].indices)
    tr2, _ = split_indices(50000, 5000, 42)
    assert torch.equal(tr, tr2)
    tr3, _ = split_indices(50000, 5000, 7)
    assert not torch.equal(tr, tr3)


def test_synthetic_is_balanced_deterministic_and_capped():
    cfg = DatasetConfig(name="synthetic", num_classes=10, val_size=100, max_train=50)
    a, b = make_synthetic(cfg), make_synthetic(cfg)
    assert torch.equal(a.train.x, b.train.x) and a.synthetic
    assert len(a.train) == 50 and len(a.val) == 100 and a.train.x.dtype == torch.uint8
    assert a.train.x.shape[1:] == (3, 32, 32)


def _write(path, obj):
    path.write_bytes(pickle.dumps(obj, protocol=4))


def _fake_root(tmp_path, n=20, bad=None):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("train", "test"):
        obj = {"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8), "fine_labels": list(range(n)),
               "coarse_labels": [i // 5 for i in range(n)], "batch_label": name}
        if bad and name in bad:
            obj.update(bad[name])
        _write(folder / name, obj)
    _write(folder / "meta", {"fine_label_names": [f"c{i}" for i in range(100)],
                             "coarse_label_names": [f"g{i}" for i in range(20)]})
    return tmp_path


def test_reads_the_official_layout(tmp_path):
    root = _fake_root(tmp_path)
    data = load_dataset(DatasetConfig(val_size=5), str(root))
    assert len(data.train) == 15 and len(data.val) == 5 and len(data.test) == 20
    assert data.class_names[3] == "c3" and int(data.fine_to_coarse[7]) == 1


def test_missing_root_names_path_and_flag(tmp_path):
    with pytest.raises(DataError) as exc:
        load_dataset(DatasetConfig(), str(tmp_path / "nowhere"))
    msg = str(exc.value)
    assert "nowhere" in msg and "--data-root" in msg


def test_missing_one_file(tmp_path):
    root = _fake_root(tmp_path)
    (root / "cifar-100-python" / "meta").unlink()
    with pytest.raises(DataError, match="meta"):
        load_dataset(DatasetConfig(val_size=5), str(root))


def test_download_failure_is_clear(tmp_path, monkeypatch):
    import torchvision.datasets.utils as u

    def no_network(*a, **k):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(u, "download_and_extract_archive", no_network)
    with pytest.raises(DataError, match="download .* failed.*--data-root"):
        load_dataset(DatasetConfig(download=True), str(tmp_path / "dl"))


@pytest.mark.parametrize(
    "bad, needle",
    [
        ({"train": {"data": np.zeros((20, 100), dtype=np.uint8)}}, "shape"),
        ({"test": {"fine_labels": [200] * 20}}, "out of range"),
        ({"train": {"fine_labels": [1] * 3}}, "labels"),
    ],
)
def test_wrong_arrays_name_the_file(tmp_path, bad, needle):
    root = _fake_root(tmp_path, bad=bad)
    with pytest.raises(DataError) as exc:
        load_dataset(DatasetConfig(val_size=5), str(root))
    assert needle in str(exc.value) and "cifar-100-python" in str(exc.value)


def test_truncated_file(tmp_path):
    root = _fake_root(tmp_path)
    f = root / "cifar-100-python" / "train"
    f.write_bytes(f.read_bytes()[:500])
    with pytest.raises(DataError, match="train.*truncated or corrupted"):
        load_dataset(DatasetConfig(val_size=5), str(root))


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_malicious_pickle_is_refused_without_running(tmp_path, capsys):
    f = tmp_path / "train"
    f.write_bytes(pickle.dumps({"data": _Evil()}))
    with pytest.raises(DataError, match="refused to load global builtins.print"):
        read_pickle(f)
    assert "pwned" not in capsys.readouterr().out


@pytest.mark.realdata
def test_real_data_split_and_balance(real_root):
    data = load_dataset(DatasetConfig(), str(real_root))
    assert (len(data.train), len(data.val), len(data.test)) == (45000, 5000, 10000)
    counts = torch.bincount(torch.cat([data.train.y, data.val.y]), minlength=100)
    assert torch.all(counts == 500)
    assert torch.all(torch.bincount(data.test.y, minlength=100) == 100)
    x = data.train.x[:2000].float() / 255
    assert torch.allclose(x.mean((0, 2, 3)), torch.tensor([0.507, 0.487, 0.441]), atol=0.02)
