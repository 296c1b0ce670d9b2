"""CIFAR-100 (official "python version" layout) and a synthetic stand-in, as uint8 tensors, split once.

The whole data set lives in memory as ``(N, 3, 32, 32)`` uint8 tensors (and later on the training device);
no PIL and no per-image Python loop. Data pickles go through a restricted unpickler that only rebuilds
numpy arrays, so a malicious file cannot run code. What to load is a :class:`DataSpec` of plain values.
"""

from __future__ import annotations

import io
import os
import pickle
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..core.seeding import derive_seed

ARCHIVE_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
ARCHIVE_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
FOLDER = "cifar-100-python"
FILES = ("train", "test", "meta")
ROOT_HINT = "pass --data-root DIR (the folder that contains cifar-100-python/) or set CIFAR100_ROOT"


@dataclass(frozen=True)
class DataSpec:
    """Which data set, how it is split into train/val (a seeded permutation) and how many images of each split are
    kept; ``root``/``download``: where the files are and whether to fetch them; ``synthetic_*``: the generated set."""

    name: str = "cifar100"  # or "synthetic"
    num_classes: int = 100
    val_size: int = 5000
    split_seed: int = 42
    max_train: int | None = None
    max_val: int | None = None
    max_test: int | None = None
    root: str | None = None  # the folder that contains cifar-100-python/ (after --data-root and $CIFAR100_ROOT)
    download: bool | str = "auto"
    synthetic_train_size: int = 2000  # before the train/val split
    synthetic_test_size: int = 500
    synthetic_noise: float = 0.35


@dataclass(frozen=True)
class Split:
    """Images ``x`` (N, 3, 32, 32) uint8 and fine labels ``y`` (N,) int64, on one device."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def to(self, device: torch.device | str) -> "Split":
        return Split(self.x.to(device), self.y.to(device))

    def head(self, n: int | None) -> "Split":
        return self if n is None else Split(self.x[:n], self.y[:n])


@dataclass(frozen=True)
class Dataset:
    """The three splits of the study plus class metadata. ``synthetic`` marks generated data."""

    train: Split
    val: Split
    test: Split
    class_names: list[str]
    coarse_names: list[str]
    fine_to_coarse: torch.Tensor  # (num_classes,) int64
    synthetic: bool
    source: str  # where the data came from, for reports

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to(self, device: torch.device | str) -> "Dataset":
        return replace(self, train=self.train.to(device), val=self.val.to(device), test=self.test.to(device))


# -------------------------------------------------------------------------------- safe unpickling
MAX_ELEMENTS = 60_000 * 3072  # the largest array a CIFAR-100 file holds (train: 50,000 x 3072 bytes), with room
MAX_MEMO = 1 << 20  # pickle memo indices: the files use a few hundred; the C unpickler sizes its table by the index
MEMO_OPS = {"PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET", "LONG_BINGET"}


try:  # numpy's own (private) array rebuilder, which numpy's pickles name
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct as _np_reconstruct


def _reconstruct(subtype, shape, dtype):
    """numpy's ``_reconstruct``, refusing shapes larger than a CIFAR-100 file needs before anything is allocated."""
    if int(np.prod(np.asarray(shape, dtype=np.float64))) > MAX_ELEMENTS:
        raise pickle.UnpicklingError(f"refused an array of shape {tuple(shape)} (more than CIFAR-100 needs)")
    return _np_reconstruct(subtype, shape, dtype)


def _dtype(*args):
    """``numpy.dtype`` without object arrays (their items would be arbitrary pickles)."""
    dt = np.dtype(*args)
    if dt.hasobject:
        raise pickle.UnpicklingError("refused an array of Python objects")
    return dt


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds dicts, lists, strings, numbers and numpy arrays of bounded size; refuses every other global."""

    _ALLOWED = {
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): _dtype,
        ("_codecs", "encode"): __import__("codecs").encode,  # how protocol 2 (the official files) stores bytes
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        raise pickle.UnpicklingError(f"refused to load global {module}.{name}")


def _check_opcodes(raw: bytes) -> None:
    """Walk the pickle's opcodes without building anything: memo indices beyond :data:`MAX_MEMO` (which would make
    the unpickler allocate a table of that size) are refused."""
    import pickletools

    for op, arg, _ in pickletools.genops(raw):
        if op.name in MEMO_OPS and isinstance(arg, int) and arg > MAX_MEMO:
            raise pickle.UnpicklingError(f"refused a memo index of {arg}")


def read_pickle(path: Path) -> dict:
    """Load one data pickle through the restricted unpickler; any problem is a ``DataError`` naming the file."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read data file {str(path)!r}: {exc.strerror or exc}") from None
    try:
        _check_opcodes(raw)
        obj = _ArrayUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except pickle.UnpicklingError as exc:
        if str(exc).startswith("refused"):
            raise DataError(f"data file {str(path)!r} was not loaded: {exc} (only numpy arrays of CIFAR-100's "
                            "size are allowed)") from None
        raise DataError(f"data file {str(path)!r} is truncated or corrupted ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - untrusted bytes: whatever the parser trips on, the file is damaged
        raise DataError(f"data file {str(path)!r} is truncated or corrupted ({type(exc).__name__})") from None
    if not isinstance(obj, dict):
        raise DataError(f"data file {str(path)!r}: expected a dict, got {type(obj).__name__}")
    return obj


# -------------------------------------------------------------------------------- locating the files
def resolve_root(cli_root: str | None, configured: str | None = None) -> Path:
    """``--data-root`` beats ``CIFAR100_ROOT`` beats the configured root (``dataset.root``) beats ``./data``."""
    root = cli_root or os.environ.get("CIFAR100_ROOT") or configured or "data"
    return Path(root).expanduser()


def _folder(root: Path) -> Path | None:
    """The folder holding train/test/meta: ``root/cifar-100-python`` or ``root`` itself."""
    for cand in (root / FOLDER, root):
        if all((cand / f).is_file() for f in FILES):
            return cand
    return None


def find_cifar100(root: Path, download: bool | str = "auto") -> Path:
    """Return the folder with the three files, downloading the official archive when allowed (``"auto"`` or
    True); with ``"auto"`` a failed download ends in the same one-line "not found" message as no download."""
    folder = _folder(root)
    if folder is not None:
        return folder
    where = root / FOLDER
    missing = [f for f in FILES if not (where / f).is_file()]
    if root.is_dir() and where.is_dir():
        raise DataError(f"CIFAR-100 incomplete: {str(where)!r} lacks {', '.join(missing)}; {ROOT_HINT}")
    tried = ""
    if download:
        try:
            _download(root)
        except DataError as exc:
            if download is True:
                raise
            tried = f" (a download was tried and failed: {exc.__cause__ or 'no network?'})"
        folder = _folder(root)
        if folder is not None:
            print(f"CIFAR-100 downloaded and checked (md5) into {str(root / FOLDER)!r}", flush=True)
            return folder
    raise DataError(
        f"CIFAR-100 not found: looked for {str(where)!r} (with train, test, meta){tried}; {ROOT_HINT}"
    )


def archive_url() -> str:
    """The archive to fetch: ``$CIFAR100_URL`` (a mirror) or the official one."""
    return os.environ.get("CIFAR100_URL") or ARCHIVE_URL


def _download(root: Path) -> None:
    """Fetch and unpack the archive with torchvision's downloader (progress bar, md5 check); a network that does
    not answer gives up after a minute instead of hanging."""
    import socket

    from torchvision.datasets.utils import download_and_extract_archive

    url = archive_url()
    before = socket.getdefaulttimeout()
    created = [p for p in (root, *root.parents) if not p.exists()]  # the folders this attempt makes
    try:
        root.mkdir(parents=True, exist_ok=True)
        print(f"CIFAR-100 not in {str(root)!r}: downloading {url}", flush=True)
        socket.setdefaulttimeout(60)
        download_and_extract_archive(url, download_root=str(root), md5=ARCHIVE_MD5)
    except Exception as exc:  # noqa: BLE001 - any network/IO failure becomes one clear line
        for folder in created:  # a mistyped data root is not left behind as empty folders
            try:
                folder.rmdir()
            except OSError:
                break
        reason = f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}"
        raise DataError(f"CIFAR-100 download to {str(root)!r} failed ({reason}); no network? {ROOT_HINT}") \
            from RuntimeError(reason)
    finally:
        socket.setdefaulttimeout(before)


# -------------------------------------------------------------------------------- reading
def _images_and_labels(obj: dict, path: Path, num_classes: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    for key in ("data", "fine_labels", "coarse_labels"):
        if key not in obj:
            raise DataError(f"data file {str(path)!r} has no {key!r} entry")
    data = obj["data"]
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3072 or data.dtype != np.uint8:
        shape = getattr(data, "shape", None)
        raise DataError(f"data file {str(path)!r}: 'data' must be a uint8 array of shape (N, 3072), got {shape}")
    try:
        fine = np.asarray(obj["fine_labels"])
        coarse = np.asarray(obj["coarse_labels"])
    except (ValueError, TypeError):
        raise DataError(f"data file {str(path)!r}: labels must be lists of integers") from None
    n = data.shape[0]
    if fine.shape != (n,) or coarse.shape != (n,):
        raise DataError(f"data file {str(path)!r}: {n} images but {fine.shape[0] if fine.ndim else 0} labels")
    if n and (fine.dtype.kind not in "iu" or coarse.dtype.kind not in "iu"):
        raise DataError(f"data file {str(path)!r}: labels must be integers, got {fine.dtype} / {coarse.dtype}")
    if n and (fine.min() < 0 or fine.max() >= num_classes):
        raise DataError(f"data file {str(path)!r}: fine labels out of range 0..{num_classes - 1}")
    if n and coarse.min() < 0:
        raise DataError(f"data file {str(path)!r}: negative coarse labels")
    x = torch.from_numpy(data.reshape(n, 3, 32, 32).copy())
    return x, torch.from_numpy(fine.astype(np.int64)), coarse.astype(np.int64)


def split_indices(n: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded train/val split of ``n`` indices, identical to ``torch.utils.data.random_split``."""
    if not 0 < val_size < n:
        raise DataError(f"dataset.val_size: {val_size} must be between 1 and {n - 1} for {n} training images")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[: n - val_size], perm[n - val_size :]


def load_cifar100(folder: Path, spec: DataSpec) -> Dataset:
    meta = read_pickle(folder / "meta")
    names = meta.get("fine_label_names")
    coarse_names = meta.get("coarse_label_names")
    if not isinstance(names, list) or len(names) != spec.num_classes or not isinstance(coarse_names, list):
        raise DataError(f"data file {str(folder / 'meta')!r}: expected {spec.num_classes} fine label names")
    tx, ty, tcoarse = _images_and_labels(read_pickle(folder / "train"), folder / "train", spec.num_classes)
    sx, sy, _ = _images_and_labels(read_pickle(folder / "test"), folder / "test", spec.num_classes)
    if len(tcoarse) and tcoarse.max() >= len(coarse_names):
        raise DataError(f"data file {str(folder / 'train')!r}: coarse labels out of range 0..{len(coarse_names) - 1}")
    fine_to_coarse = torch.zeros(spec.num_classes, dtype=torch.int64)
    fine_to_coarse[ty] = torch.from_numpy(tcoarse)
    tr, va = split_indices(len(ty), spec.val_size, spec.split_seed)
    return Dataset(
        train=Split(tx[tr], ty[tr]).head(spec.max_train),
        val=Split(tx[va], ty[va]).head(spec.max_val),
        test=Split(sx, sy).head(spec.max_test),
        class_names=list(names),
        coarse_names=list(coarse_names),
        fine_to_coarse=fine_to_coarse,
        synthetic=False,
        source=str(folder),
    )


def make_synthetic(spec: DataSpec, seed: int = 0) -> Dataset:
    """A small generated data set with learnable class structure, for tests and demos.

    Each class has a smooth random colour pattern (an 8x8 grid upsampled to 32x32); an image is its class
    pattern plus per-pixel noise. Labels are balanced. It is clearly not CIFAR-100: ``synthetic=True``.
    """
    k = spec.num_classes
    g = torch.Generator().manual_seed(derive_seed(seed, "synthetic"))
    protos = torch.rand(k, 3, 8, 8, generator=g)
    protos = torch.nn.functional.interpolate(protos, size=32, mode="bilinear", align_corners=False)

    def draw(n: int) -> Split:
        y = torch.arange(n) % k
        y = y[torch.randperm(n, generator=g)]
        x = protos[y] + spec.synthetic_noise * torch.randn(n, 3, 32, 32, generator=g)
        return Split((x.clamp(0, 1) * 255).round().to(torch.uint8), y)

    full, test = draw(spec.synthetic_train_size), draw(spec.synthetic_test_size)
    tr, va = split_indices(len(full), spec.val_size, spec.split_seed)
    return Dataset(
        train=Split(full.x[tr], full.y[tr]).head(spec.max_train),
        val=Split(full.x[va], full.y[va]).head(spec.max_val),
        test=test.head(spec.max_test),
        class_names=[f"synthetic_{i}" for i in range(k)],
        coarse_names=[f"synthetic_group_{i}" for i in range(max(1, k // 5))],
        fine_to_coarse=torch.arange(k) // 5 % max(1, k // 5),
        synthetic=True,
        source="synthetic (generated, not CIFAR-100)",
    )


def load_dataset(spec: DataSpec, data_root: str | None = None) -> Dataset:
    """The data set ``spec`` names, on the CPU: real CIFAR-100 from disk (``data_root``: ``--data-root``), or the
    synthetic stand-in."""
    if spec.name == "synthetic":
        data = make_synthetic(spec)
    else:
        try:
            folder = find_cifar100(resolve_root(data_root, spec.root), spec.download)
        except OSError as exc:  # an unreadable folder on the way
            raise DataError(f"cannot look for CIFAR-100 under {data_root or spec.root!r}: "
                            f"{exc.strerror or exc}") from None
        data = load_cifar100(folder, spec)
    for name in ("train", "val", "test"):
        if len(getattr(data, name)) == 0:
            raise DataError(f"the {name} split of {data.source} is empty")
    return data
