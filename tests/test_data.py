"""The split (sizes, disjointness, determinism, same as random_split), safe loading, clear data errors."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from cifar100_func.data.dataset import DataSpec, load_dataset, make_synthetic, read_pickle, split_indices
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
    cfg = DataSpec(name="synthetic", num_classes=10, val_size=100, max_train=50)
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
    data = load_dataset(DataSpec(val_size=5), str(root))
    assert len(data.train) == 15 and len(data.val) == 5 and len(data.test) == 20
    assert data.class_names[3] == "c3" and int(data.fine_to_coarse[7]) == 1


def test_missing_root_names_path_and_flag(tmp_path):
    with pytest.raises(DataError) as exc:
        load_dataset(DataSpec(), str(tmp_path / "nowhere"))
    msg = str(exc.value)
    assert "nowhere" in msg and "--data-root" in msg


def test_missing_one_file(tmp_path):
    root = _fake_root(tmp_path)
    (root / "cifar-100-python" / "meta").unlink()
    with pytest.raises(DataError, match="meta"):
        load_dataset(DataSpec(val_size=5), str(root))


def _serve(folder):
    """A local HTTP server for ``folder`` (the network is never used); returns (base url, stop)."""
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_port}", server.shutdown


def _archive(tmp_path):
    """A .tar.gz with the official layout (a small fake data set), and its md5."""
    import hashlib
    import tarfile

    (tmp_path / "src").mkdir()
    src = _fake_root(tmp_path / "src")
    served = tmp_path / "served"
    served.mkdir()
    with tarfile.open(served / "cifar-100-python.tar.gz", "w:gz") as tar:
        tar.add(src / "cifar-100-python", arcname="cifar-100-python")
    return served, hashlib.md5((served / "cifar-100-python.tar.gz").read_bytes()).hexdigest()


def test_auto_download_fetches_checks_and_says_where(tmp_path, monkeypatch, capsys):
    from cifar100_func.data import dataset as data_mod

    served, md5 = _archive(tmp_path)
    base, stop = _serve(served)
    try:
        monkeypatch.setenv("CIFAR100_URL", f"{base}/cifar-100-python.tar.gz")
        monkeypatch.setattr(data_mod, "ARCHIVE_MD5", md5)
        data = load_dataset(DataSpec(val_size=5), str(tmp_path / "fresh"))
        assert len(data.train) == 15 and len(data.test) == 20
        assert "downloaded and checked (md5) into" in capsys.readouterr().out
        assert (tmp_path / "fresh" / "cifar-100-python" / "meta").is_file()
        # a corrupted archive fails its checksum: no data set half-read from it
        monkeypatch.setattr(data_mod, "ARCHIVE_MD5", "0" * 32)
        with pytest.raises(DataError, match="not found.*download was tried"):
            load_dataset(DataSpec(val_size=5), str(tmp_path / "other"))
        with pytest.raises(DataError, match="download .* failed"):
            load_dataset(DataSpec(val_size=5, download=True), str(tmp_path / "other2"))
    finally:
        stop()


def test_auto_download_offline_is_the_not_found_line(tmp_path):
    # conftest points the downloader at a port that refuses: as a machine without a network
    with pytest.raises(DataError) as exc:
        load_dataset(DataSpec(), str(tmp_path / "offline"))
    msg = str(exc.value)
    assert msg.startswith("CIFAR-100 not found") and "--data-root" in msg and "\n" not in msg


def test_download_never_when_false(tmp_path, monkeypatch):
    import torchvision.datasets.utils as u

    monkeypatch.setattr(u, "download_and_extract_archive", lambda *a, **k: pytest.fail("downloaded"))
    with pytest.raises(DataError, match="not found"):
        load_dataset(DataSpec(download=False), str(tmp_path / "nowhere"))


def test_download_failure_is_clear(tmp_path, monkeypatch):
    import torchvision.datasets.utils as u

    def no_network(*a, **k):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(u, "download_and_extract_archive", no_network)
    with pytest.raises(DataError, match="download .* failed.*--data-root"):
        load_dataset(DataSpec(download=True), str(tmp_path / "dl"))


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
        load_dataset(DataSpec(val_size=5), str(root))
    assert needle in str(exc.value) and "cifar-100-python" in str(exc.value)


def test_truncated_file(tmp_path):
    root = _fake_root(tmp_path)
    f = root / "cifar-100-python" / "train"
    f.write_bytes(f.read_bytes()[:500])
    with pytest.raises(DataError, match="train.*truncated or corrupted"):
        load_dataset(DataSpec(val_size=5), str(root))


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_malicious_pickle_is_refused_without_running(tmp_path, capsys):
    f = tmp_path / "train"
    f.write_bytes(pickle.dumps({"data": _Evil()}))
    with pytest.raises(DataError, match="refused to load global .*print"):  # ray, once started, patches print
        read_pickle(f)
    assert "pwned" not in capsys.readouterr().out


@pytest.mark.realdata
def test_real_data_split_and_balance(real_root):
    data = load_dataset(DataSpec(), str(real_root))
    assert (len(data.train), len(data.val), len(data.test)) == (45000, 5000, 10000)
    counts = torch.bincount(torch.cat([data.train.y, data.val.y]), minlength=100)
    assert torch.all(counts == 500)
    assert torch.all(torch.bincount(data.test.y, minlength=100) == 100)
    x = data.train.x[:2000].float() / 255
    assert torch.allclose(x.mean((0, 2, 3)), torch.tensor([0.507, 0.487, 0.441]), atol=0.02)
