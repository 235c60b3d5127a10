"""Data sources: packed-JPEG npz, image folders, bad files."""
import pytest
import torch
from PIL import Image

from rcdm.data import FolderImages, NpzImages, decode_all, fingerprint, listing_of, open_dataset


def test_npz_matches_readme(cifar_npz):
    ds = open_dataset(f"{cifar_npz}:test")
    assert isinstance(ds, NpzImages) and len(ds) == 1000  # the fixture's test split (tests/data/README.md)
    assert torch.bincount(torch.as_tensor(ds.labels)).tolist() == [100] * 10
    x, y = ds[13]
    assert x.shape == (3, 32, 32) and x.dtype == torch.uint8 and y == 13 % 10  # class-interleaved order


def test_unknown_split_and_spec_are_explained(cifar_npz, tmp_path):
    with pytest.raises(ValueError, match="no split 'val'"):
        open_dataset(f"{cifar_npz}:val")
    with pytest.raises(ValueError, match="not found or not understood"):
        open_dataset(str(tmp_path / "nothing"))


def _folder(tmp_path, n=120, bad=0):
    tmp_path.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        d = tmp_path / ("cat" if i % 2 else "dog")
        d.mkdir(exist_ok=True)
        if i < bad:
            (d / f"{i}.png").write_bytes(b"\x89PNG broken")
        else:
            Image.new("RGB", (40, 48), (i, 0, 0)).save(d / f"{i}.png")
    return tmp_path


def test_folder_skips_and_counts_bad_images(tmp_path):
    ds = open_dataset(str(_folder(tmp_path, n=120, bad=1)))
    assert isinstance(ds, FolderImages) and ds.classes == ["cat", "dog"]
    with pytest.warns(UserWarning, match="skipped 1 of 120"):
        imgs, labels, kept, nbad = decode_all(ds, resolution=32, max_bad_frac=0.01)
    assert nbad == 1 and len(kept) == 119 and imgs.shape == (119, 3, 32, 32)


def test_too_many_bad_images_is_an_error(tmp_path):
    ds = open_dataset(str(_folder(tmp_path, n=50, bad=2)))
    with pytest.raises(ValueError, match="2 of 50 images are unreadable"), pytest.warns(UserWarning):
        decode_all(ds, resolution=32)


def test_fingerprint_changes_with_content(tmp_path):
    a = fingerprint(open_dataset(str(_folder(tmp_path / "a", n=10))))
    b = fingerprint(open_dataset(str(_folder(tmp_path / "b", n=11))))
    assert a != b and a == fingerprint(open_dataset(str(tmp_path / "a")))


def test_folder_listing_replaces_the_scan(tmp_path, monkeypatch, cifar_npz):
    from pathlib import Path

    scanned = open_dataset(str(_folder(tmp_path, n=6)))
    listing = listing_of(scanned)
    monkeypatch.setattr(Path, "rglob", lambda *a, **k: pytest.fail("the image folder was scanned again"))
    listed = open_dataset(str(tmp_path), listing=listing)
    assert listed.files == scanned.files and fingerprint(listed) == fingerprint(scanned)
    assert listing_of(open_dataset(f"{cifar_npz}:test")) is None  # nothing to skip
