"""Untrusted data files: bounded memory, one DataError for every damaged file, never a traceback."""

from __future__ import annotations

import json
import pickle
import struct
import subprocess
import sys

import numpy as np
import pytest

from cifar100_func.data.dataset import DataSpec, load_dataset, read_pickle
from cifar100_func.errors import DataError


def _layout(folder, n=20, protocol=4, labels=None):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in ("train", "test"):
        obj = {"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8),
               "fine_labels": labels if labels is not None else list(range(n)),
               "coarse_labels": [i // 5 for i in range(n)], "batch_label": name}
        (folder / name).write_bytes(pickle.dumps(obj, protocol=protocol))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"c{i}" for i in range(100)],
                                                "coarse_label_names": [f"g{i}" for i in range(20)]}, protocol=protocol))


def test_protocol_2_files_load_like_the_official_ones(tmp_path):
    _layout(tmp_path / "cifar-100-python", protocol=2)  # bytes are stored through _codecs.encode there
    data = load_dataset(DataSpec(val_size=5), str(tmp_path))
    assert len(data.train) == 15 and data.train.x.dtype.is_floating_point is False


def test_a_huge_memo_index_is_refused_before_allocating(tmp_path):
    f = tmp_path / "meta"
    f.write_bytes(b"\x80\x04}r" + struct.pack("<I", 0xFFFFFFF0) + b".")  # EMPTY_DICT, LONG_BINPUT 4e9
    with pytest.raises(DataError, match="memo index"):
        read_pickle(f)


def test_a_huge_array_shape_is_refused_before_allocating(tmp_path):
    class Big:  # pickles as numpy's _reconstruct(ndarray, (10**12,), dtype) without holding the data
        def __reduce__(self):
            return (np.zeros(1).__reduce__()[0], (np.ndarray, (10**12,), np.dtype("u1")))

    f = tmp_path / "train"
    f.write_bytes(pickle.dumps({"data": Big()}, protocol=4))
    with pytest.raises(DataError, match="refused an array of shape"):
        read_pickle(f)


def test_object_arrays_are_refused(tmp_path):
    f = tmp_path / "train"
    f.write_bytes(pickle.dumps({"data": np.array([1, "x"], dtype=object)}, protocol=4))
    with pytest.raises(DataError, match="Python objects"):
        read_pickle(f)


@pytest.mark.parametrize("labels, needle", [(["a"] * 20, "integers"), ([[1, 2]] * 20, "labels")])
def test_labels_of_the_wrong_kind(tmp_path, labels, needle):
    _layout(tmp_path / "cifar-100-python", labels=labels)
    with pytest.raises(DataError, match=needle):
        load_dataset(DataSpec(val_size=5), str(tmp_path))


def test_an_empty_split_is_a_data_error(tmp_path):
    _layout(tmp_path / "cifar-100-python")
    folder = tmp_path / "cifar-100-python"
    (folder / "test").write_bytes(pickle.dumps({"data": np.zeros((0, 3072), np.uint8), "fine_labels": [],
                                                "coarse_labels": []}, protocol=4))
    with pytest.raises(DataError, match="test split .* is empty"):
        load_dataset(DataSpec(val_size=5), str(tmp_path))


FUZZ = r"""
import json, random, resource, sys
from pathlib import Path
resource.setrlimit(resource.RLIMIT_AS, (CAP, CAP))
from cifar100_func.data.dataset import DataSpec, load_dataset
from cifar100_func.errors import DataError
root, cases = Path(sys.argv[1]), int(sys.argv[2])
folder = root / "cifar-100-python"
originals = {name: (folder / name).read_bytes() for name in ("train", "test", "meta")}
rng = random.Random(1234)
outcomes = {"loaded": 0, "data_error": 0, "other": []}
for case in range(cases):
    name = rng.choice(sorted(originals))
    raw = bytearray(originals[name])
    kind = rng.choice(["flip", "truncate", "insert", "random"])
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
    elif kind == "truncate":
        raw = raw[: rng.randrange(len(raw))]
    elif kind == "insert":
        pos = rng.randrange(len(raw))
        raw[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    else:
        raw = bytearray(rng.randbytes(rng.randint(0, 64)))
    (folder / name).write_bytes(bytes(raw))
    try:
        load_dataset(DataSpec(val_size=5), str(root))
        outcomes["loaded"] += 1
    except DataError:
        outcomes["data_error"] += 1
    except BaseException as exc:
        outcomes["other"].append(f"case {case} ({name}, {kind}): {type(exc).__name__}: {str(exc)[:200]}")
    (folder / name).write_bytes(originals[name])
print(json.dumps(outcomes))
"""


def test_fuzzed_files_load_or_fail_cleanly_within_a_memory_cap(tmp_path):
    _layout(tmp_path / "cifar-100-python")
    cap = 6 << 30  # address space for torch's own libraries plus the few MB a valid small file needs
    proc = subprocess.run([sys.executable, "-c", FUZZ.replace("CAP", str(cap)), str(tmp_path), "300"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    outcomes = json.loads(proc.stdout.strip().splitlines()[-1])
    assert outcomes["other"] == [] and outcomes["data_error"] > 100, outcomes


def test_a_checkpoint_declaring_a_huge_model_is_refused_before_building_it(tmp_path):
    import torch

    from cifar100_func.errors import CheckpointError
    from cifar100_func.runtime.checkpoint import load_weights

    sd = {"stem.0.weight": torch.zeros(16, 3, 3, 3), "fc.weight": torch.zeros(1).expand(10**9, 256)}
    for stage in (1, 2, 3):
        sd[f"layer{stage}.0.conv1.weight"] = torch.zeros(1).expand(16, 64, 1, 1)
    torch.save(sd, tmp_path / "evil.pt")  # stride-0 tensors: a few bytes in the file, 1 TB once materialised
    with pytest.raises(CheckpointError, match="number of classes 1000000000 exceeds"):
        load_weights(tmp_path / "evil.pt")
