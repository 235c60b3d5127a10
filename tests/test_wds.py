"""WebDataset tar shards: a map-style source read at random, indexed once from the tar headers."""
import io
import pickle
import tarfile
from itertools import pairwise

import numpy as np
import pytest
import torch

from rcdm.data import ImageError, TarShardImages, decode_all, fingerprint, listing_of, open_dataset, open_image
from rcdm.images import pil_to_uint8

SHARD_SIZES = (12, 12, 6)


def write_shard(path, samples):
    """`samples`: (key, {extension: bytes}) written as WebDataset's TarWriter writes them: one member per extension,
    the members of a sample consecutive."""
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def cifar_samples(npz, n, split="test"):
    """The first n CIFAR-10 JPEGs of a split as (key, {"jpg": bytes, "cls": b"label"})."""
    z = np.load(npz)
    buf, off, lab = z[f"{split}_jpeg"], z[f"{split}_offsets"], z[f"{split}_labels"]
    return [(f"s{i:05d}", {"jpg": buf[off[i]:off[i + 1]].tobytes(), "cls": str(lab[i]).encode()}) for i in range(n)]


def write_shards(folder, samples, sizes):
    folder.mkdir(parents=True, exist_ok=True)
    starts = np.cumsum((0, *sizes))
    return [write_shard(folder / f"train-{j:06d}.tar", samples[a:b]) for j, (a, b) in enumerate(pairwise(starts))]


@pytest.fixture(scope="module")
def shards(tmp_path_factory, cifar_npz):
    samples = cifar_samples(cifar_npz, sum(SHARD_SIZES))
    return write_shards(tmp_path_factory.mktemp("wds") / "shards", samples, SHARD_SIZES), samples


def test_shards_read_like_the_jpegs_they_hold(shards):
    paths, samples = shards
    folder = paths[0].parent
    ds = open_dataset(f"wds:{folder}/train-{{000000..000002}}.tar")
    assert isinstance(ds, TarShardImages) and len(ds) == 30 and ds.classes == []
    assert [ds.name(i) for i in (0, 12, 29)] == ["train-000000.tar:s00000", "train-000001.tar:s00012",
                                                 "train-000002.tar:s00029"]
    assert ds.labels.tolist() == [int(m["cls"]) for _, m in samples] == [i % 10 for i in range(30)]
    for i in (0, 11, 12, 29):
        x, y = ds[i]
        assert x.dtype == torch.uint8 and x.shape == (3, 32, 32) and y == i % 10
        assert torch.equal(x, pil_to_uint8(open_image(samples[i][1]["jpg"])))
    same = [open_dataset(str(folder)), open_dataset(f"wds:{folder}"), TarShardImages([str(p) for p in paths]),
            open_dataset(f"{folder}/train-{{000000..000001}}.tar::{paths[2]}")]
    for other in same:
        assert other.index_lines() == ds.index_lines()
    one = open_dataset(str(paths[1]))
    assert len(one) == 12 and torch.equal(one[0][0], ds[12][0])


def test_labels_from_json_or_none_at_all(tmp_path, shards):
    _, samples = shards
    jpg = samples[0][1]["jpg"]
    write_shard(tmp_path / "json.tar", [("a", {"jpg": jpg, "json": b'{"label": 7}'}),
                                        ("b", {"jpeg": jpg, "json": b'{"cls": 3, "caption": "x"}'})])
    assert open_dataset(str(tmp_path / "json.tar")).labels.tolist() == [7, 3]
    write_shard(tmp_path / "unlabelled.tar", [("a", {"jpg": jpg}), ("b", {"png": _png(), "txt": b"hi"})])
    ds = open_dataset(str(tmp_path / "unlabelled.tar"))
    assert ds.labels.tolist() == [-1, -1] and ds[1][0].shape == (3, 5, 4)
    write_shard(tmp_path / "partly.tar", [("a", {"jpg": jpg, "cls": b"1"}), ("b", {"jpg": jpg})])
    with pytest.raises(ValueError, match=r"partly.tar: sample 'b' has no label"):
        open_dataset(str(tmp_path / "partly.tar"))
    write_shard(tmp_path / "named.tar", [("a", {"jpg": jpg, "cls": b"n01440764"})])
    with pytest.raises(ValueError, match=r"named.tar: sample 'a': label 'n01440764' is not an integer"):
        open_dataset(str(tmp_path / "named.tar"))


def _png():
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (4, 5), (1, 2, 3)).save(out, "PNG")
    return out.getvalue()


def test_corrupt_image_is_an_image_error_naming_shard_and_key(tmp_path, shards):
    _, samples = shards
    good = samples[:5]
    write_shard(tmp_path / "bad-000000.tar", [*good[:2], ("broken", {"jpg": b"\xff\xd8 not a jpeg", "cls": b"4"}),
                                              *good[2:]])
    ds = open_dataset(str(tmp_path / "bad-000000.tar"))
    with pytest.raises(ImageError, match=r"bad-000000.tar:broken"):
        ds[2]
    with pytest.warns(UserWarning, match="skipped 1 of 6"):
        _, labels, kept, nbad = decode_all(ds, max_bad_frac=0.2)
    assert nbad == 1 and kept.tolist() == [0, 1, 3, 4, 5] and labels.tolist() == [0, 1, 2, 3, 4]


def test_broken_shards_and_specs_are_explained(tmp_path, shards):
    paths, samples = shards
    write_shard(tmp_path / "noimage.tar", [samples[0], ("s9", {"cls": b"1", "json": b"{}"})])
    with pytest.raises(ValueError, match=r"noimage.tar: sample 's9' has 0 images among its members \(cls, json\)"):
        open_dataset(str(tmp_path / "noimage.tar"))
    write_shard(tmp_path / "two.tar", [("s1", {"jpg": samples[0][1]["jpg"], "png": _png()})])
    with pytest.raises(ValueError, match=r"two.tar: sample 's1' has 2 images"):
        open_dataset(str(tmp_path / "two.tar"))
    data = paths[0].read_bytes()
    with tarfile.open(paths[0]) as tar:
        header = tar.getmembers()[4].offset  # the third sample's first member
    for name, cut, why in (("mid", data[: header + 700], "unexpected end of data"),  # inside an image
                           ("boundary", data[:header], "truncated or corrupt tar after byte"),  # tarfile stops quietly
                           ("header", data[:header] + b"x" * 512 + data[header + 512:], "truncated or corrupt")):
        (tmp_path / f"{name}.tar").write_bytes(cut)
        with pytest.raises(ValueError, match=rf"{name}.tar: .*{why}"):
            open_dataset(str(tmp_path / f"{name}.tar"))
    with tarfile.open(tmp_path / "zipped.tar", "w:gz") as tar:
        tar.add(paths[0], arcname="x.jpg")
    with pytest.raises(ValueError, match="not a readable uncompressed tar"):
        open_dataset(str(tmp_path / "zipped.tar"))
    with pytest.raises(ValueError, match=r"2 of 3 shards not found, first: .*train-000003.tar"):
        open_dataset(f"{paths[0].parent}/train-{{000002..000004}}.tar")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .tar shards found"):
        open_dataset(f"wds:{tmp_path / 'empty'}")
    with pytest.raises(ValueError, match=r"WebDataset tar shards \('wds:"):
        open_dataset(str(tmp_path / "nothing"))


def test_workers_and_pickling_give_the_same_items(shards):
    ds = open_dataset(f"wds:{shards[0][0].parent}")
    first = ds[0][0]  # the parent now holds an open handle, which forked workers must not use
    copy = pickle.loads(pickle.dumps(ds))
    assert torch.equal(copy[0][0], first) and copy.index_lines() == ds.index_lines()
    batches = {w: list(torch.utils.data.DataLoader(ds, batch_size=4, num_workers=w)) for w in (0, 2)}
    assert len(batches[0]) == len(batches[2]) == 8
    for (x0, y0), (x2, y2) in zip(batches[0], batches[2]):
        assert torch.equal(x0, x2) and torch.equal(y0, y2)
    assert torch.equal(ds[0][0], first)  # the parent's handle still reads correctly
    ds.close()


def test_fingerprint_is_stable_and_sees_a_changed_shard(tmp_path, cifar_npz):
    samples = cifar_samples(cifar_npz, 20)
    paths = write_shards(tmp_path / "d", samples, (10, 10))
    fp = fingerprint(open_dataset(str(tmp_path / "d")))
    assert fp == fingerprint(open_dataset(f"wds:{tmp_path / 'd'}/train-{{000000..000001}}.tar"))
    other = cifar_samples(cifar_npz, 21)[20][1]["jpg"]
    write_shard(paths[1], [*samples[10:15], ("s00015", {**samples[15][1], "jpg": other}), *samples[16:]])
    assert fingerprint(open_dataset(str(tmp_path / "d"))) != fp


def test_stored_listing_skips_the_scan(shards, monkeypatch):
    folder = shards[0][0].parent
    scanned = open_dataset(f"wds:{folder}")
    listing = listing_of(scanned)
    assert len(listing) == 30 and listing[0].split("\t")[0] == "train-000000.tar"
    opened = []
    real_open = tarfile.open
    monkeypatch.setattr(tarfile, "open", lambda *a, **k: opened.append(a) or real_open(*a, **k))
    listed = open_dataset(f"wds:{folder}", listing=listing)
    assert opened == [] and listed.index_lines() == listing and listed.labels.tolist() == scanned.labels.tolist()
    assert torch.equal(listed[17][0], scanned[17][0]) and fingerprint(listed) == fingerprint(scanned)
    assert open_dataset(f"wds:{folder}") and len(opened) == 3  # the counter does see a scan
    with pytest.raises(ValueError, match="names shard train-000009.tar, which .* does not hold"):
        open_dataset(f"wds:{folder}", listing=[listing[0].replace("000000", "000009")])


def test_embed_from_shards_equals_embed_from_npz(tmp_path, tiny_npz, tiny_encoder_dir):
    from rcdm.cache import EmbeddingCache
    from rcdm.cli import main as cli_main

    write_shards(tmp_path / "shards", cifar_samples(tiny_npz, 64, "train"), (30, 30, 4))
    for name, data in (("npz", str(tiny_npz)), ("wds", f"wds:{tmp_path}/shards/train-{{000000..000002}}.tar")):
        assert cli_main(["embed", "--encoder", f"file:{tiny_encoder_dir}", "--data", data,
                         "--out", str(tmp_path / f"{name}.safetensors")]) == 0
    npz, wds = (EmbeddingCache.load(tmp_path / f"{n}.safetensors") for n in ("npz", "wds"))
    assert wds.embeddings.shape == (64, 2, npz.dim) and torch.equal(wds.indices, npz.indices)
    assert torch.equal(wds.labels, npz.labels) and torch.equal(wds.embeddings, npz.embeddings)
