"""`rcdm embed` at scale (issue 15, items 2 and 8): a preallocated file filled in place, sharded over processes,
resumed after a kill, memory-mapped by training, statistics stored with it, and the matched encoder view."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from safetensors.torch import load_file, save_file

from conftest import TINY_UNET
from rcdm.cache import DONE, EmbeddingCache, build_cache
from rcdm.cli import main as cli_main
from rcdm.data import listing_of, open_dataset
from rcdm.embed_store import RowFile, read_header
from rcdm.encoders import load_encoder


def _embed(enc_dir, data, out, *flags):
    assert cli_main(["embed", "--encoder", f"file:{enc_dir}", "--data", str(data), "--out", str(out), *flags]) == 0
    return EmbeddingCache.load(out)


def _same(a: EmbeddingCache, b: EmbeddingCache):
    for name in ("embeddings", "indices", "labels"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert all(torch.equal(x, y) for x, y in zip(a.stats, b.stats))


def _subset_npz(src, path, n):
    """n CIFAR-10 test images as the 'train' split of a packed-JPEG npz: the source's test split in order, repeated
    as often as n needs (the fixture holds 1000; 1000 is no multiple of a 64-row chunk, so a chunk written to the
    wrong rows still differs from the straight run)."""
    z = np.load(src)
    buf, off, lab = z["test_jpeg"], z["test_offsets"], z["test_labels"]
    idx = np.arange(n) % len(lab)
    jpegs = [buf[off[i]:off[i + 1]] for i in idx]
    offsets = np.concatenate([[0], np.cumsum([len(j) for j in jpegs])])
    np.savez(path, train_jpeg=np.concatenate(jpegs), train_offsets=offsets, train_labels=lab[idx])
    return path


@pytest.fixture(scope="module")
def ref_path(tmp_path_factory, tiny_npz, tiny_encoder_dir):
    """The tiny npz embedded in one process, chunks of 16."""
    out = tmp_path_factory.mktemp("ref") / "emb.safetensors"
    _embed(tiny_encoder_dir, tiny_npz, out, "--chunk-size", "16", "--batch-size", "8", "--num-workers", "0")
    return out


@pytest.fixture
def ref(ref_path):
    return EmbeddingCache.load(ref_path)


def test_stored_stats_equal_the_computed_ones_and_training_uses_them(ref):
    flat = ref.embeddings.float().flatten(0, 1)
    mean, std = ref.embedding_stats()
    torch.testing.assert_close(mean, flat.mean(0), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(std, flat.std(0), rtol=1e-6, atol=0)
    from rcdm.model import UNetConfig
    from rcdm.train_config import TrainConfig
    from rcdm.training.setup import build_unet

    unet = build_unet(TrainConfig(unet=UNetConfig(**{**TINY_UNET, "block_out_channels": (16, 32)})), ref.dim, ref)
    assert torch.equal(unet.embedding_mean, mean) and torch.equal(unet.embedding_std, std.clamp_min(1e-6))


def test_unreadable_rows_leave_a_prefix_of_usable_rows(tmp_path, corrupt_npz, tiny_encoder_dir, ref):
    enc = load_encoder(f"file:{tiny_encoder_dir}")
    with pytest.warns(UserWarning, match="skipped 1 of 64"):
        cache = build_cache(enc, str(corrupt_npz), tmp_path / "bad.safetensors", max_bad_frac=0.05,
                            chunk_size=16, batch_size=8, num_workers=0, progress=False)
    assert cache.meta["num_bad"] == 1 and "bad.npz[train][3]: not a readable image" in cache.meta["bad_examples"][0]
    assert len(cache.indices) == 63 and 3 not in cache.indices.tolist() and int(cache.indices[3]) == 63
    assert torch.equal(cache.embeddings, ref.embeddings[cache.indices])  # row r = item indices[r]
    assert torch.equal(cache.labels, ref.labels[cache.indices])
    flat = cache.embeddings.flatten(0, 1)
    torch.testing.assert_close(cache.embedding_stats()[1], flat.std(0), rtol=1e-6, atol=0)
    assert load_file(tmp_path / "bad.safetensors")["embeddings"].shape == (64, 2, 64)  # valid safetensors


def test_float16_store(tmp_path, tiny_npz, tiny_encoder_dir, ref):
    half = _embed(tiny_encoder_dir, tiny_npz, tmp_path / "half.safetensors", "--dtype", "float16", "--num-workers", "0")
    assert half.embeddings.dtype == torch.float16 and half.meta["dtype"] == "float16"
    assert read_header(tmp_path / "half.safetensors")[0]["embeddings"].dtype == "F16"
    assert torch.equal(half.embeddings, ref.embeddings.half())
    torch.testing.assert_close(half.embedding_stats()[0], half.embeddings.float().flatten(0, 1).mean(0),
                               rtol=1e-6, atol=1e-7)


def test_a_partial_file_of_other_settings_is_refused(tmp_path, tiny_npz, tiny_encoder_dir, ref_path, capsys):
    out = tmp_path / "emb.safetensors"
    shutil.copy(ref_path, str(out) + ".partial")
    assert cli_main(["embed", "--encoder", f"file:{tiny_encoder_dir}", "--data", str(tiny_npz), "--out", str(out),
                     "--dtype", "float16"]) == 2
    err = capsys.readouterr().err
    assert "emb.safetensors.partial was started with other settings" in err and "dtype: 'float32' != now" in err
    assert "Delete it to start over" in err and not out.exists()


def _mapped_file(t: torch.Tensor) -> str | None:
    """The file whose mapping (in /proc/self/maps) holds tensor t's first byte, None for anonymous memory."""
    ptr = t.data_ptr()
    with open("/proc/self/maps") as f:
        lines = f.read().splitlines()
    for line in lines:
        parts = line.split()
        lo, hi = (int(v, 16) for v in parts[0].split("-"))
        if lo <= ptr < hi:
            return parts[5] if len(parts) > 5 and parts[5].startswith("/") else None
    return None


def test_resume_recomputes_exactly_the_pending_rows(tmp_path, tiny_npz, tiny_encoder_dir, ref_path, ref, capsys):
    out = tmp_path / "emb.safetensors"
    shutil.copy(ref_path, str(out) + ".partial")
    with RowFile(str(out) + ".partial") as f:  # as a kill leaves it: chunk 1 uncommitted, its rows half-written
        f.write("status", 16, np.zeros(16, np.uint8))
        f.write("embeddings", 16, np.full((16, 2, 64), 7.0, np.float32))
        f.set_metadata({k: v for k, v in f.metadata.items() if k == "rcdm_store"})
    capsys.readouterr()
    resumed = _embed(tiny_encoder_dir, tiny_npz, out, "--chunk-size", "16", "--batch-size", "8", "--num-workers", "0")
    assert "48 of 64 images already embedded" in capsys.readouterr().out
    _same(resumed, ref)
    assert not (tmp_path / "emb.safetensors.partial").exists()


def test_old_format_caches_still_load(tmp_path, ref):
    old = tmp_path / "old.safetensors"
    meta = {k: ref.meta[k] for k in ("encoder", "data", "fingerprint", "views", "num_items", "num_bad")}
    save_file({"embeddings": ref.embeddings.clone(), "indices": ref.indices.clone(), "labels": ref.labels.clone()},
              str(old), metadata={"rcdm": json.dumps(meta)})
    cache = EmbeddingCache.load(old)
    assert cache.stats is None and cache.files is None and cache.meta == meta
    assert all(torch.equal(getattr(cache, k), getattr(ref, k)) for k in ("embeddings", "indices", "labels"))
    flat = ref.embeddings.flatten(0, 1).float()  # no stored statistics: computed as training always did
    mean, std = cache.embedding_stats()
    assert torch.equal(mean, flat.mean(0)) and torch.equal(std, flat.std(0))


def test_a_shard_cache_stores_the_index_and_training_skips_the_scan(tmp_path, tiny_npz, tiny_encoder_dir,
                                                                   monkeypatch):
    import tarfile

    from test_wds import cifar_samples, write_shards

    write_shards(tmp_path / "shards", cifar_samples(tiny_npz, 20, "train"), (12, 8))
    spec = f"wds:{tmp_path}/shards"
    cache = _embed(tiny_encoder_dir, spec, tmp_path / "emb.safetensors", "--num-workers", "0")
    assert cache.files == listing_of(open_dataset(spec)) and len(cache.files) == 20
    scans = []
    real_open = tarfile.open
    monkeypatch.setattr(tarfile, "open", lambda *a, **k: scans.append(a) or real_open(*a, **k))
    cache.check_matches(cache.open_data(spec))
    assert scans == []


def test_load_maps_the_file_copy_on_write(ref_path, ref):
    path = _mapped_file(ref.embeddings)
    assert path == str(ref_path)  # file-backed, not read into anonymous memory
    assert _mapped_file(ref.indices) == path and ref.embeddings.numpy().flags.writeable
    before = ref.embeddings[0, 0, 0].item()
    reloaded = EmbeddingCache.load(path)
    reloaded.embeddings[0, 0, 0] += 1  # private: neither the file nor another mapping sees it
    assert EmbeddingCache.load(path).embeddings[0, 0, 0].item() == before == ref.embeddings[0, 0, 0].item()


def test_matched_view_encodes_the_full_short_side_crop(tmp_path, tiny_encoder_dir):
    enc_dir = shutil.copytree(tiny_encoder_dir, tmp_path / "enc")
    cfg = json.loads((enc_dir / "config.json").read_text())
    cfg["preprocess"]["size"] = 40  # an ImageNet-style view: resize to 40, centre crop 32
    (enc_dir / "config.json").write_text(json.dumps(cfg))
    g = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir()
    for i, (h, w) in enumerate([(32, 48), (48, 32), (32, 40)]):  # short side = the encoder's input: no resampling
        Image.fromarray(g.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
    default = _embed(enc_dir, tmp_path / "imgs", tmp_path / "default.safetensors", "--num-workers", "0")
    matched = _embed(enc_dir, tmp_path / "imgs", tmp_path / "matched.safetensors", "--num-workers", "0",
                     "--matched-view")
    enc = load_encoder(f"file:{enc_dir}")
    x = torch.stack([TF.center_crop(img, [32, 32]) for img, _ in open_dataset(str(tmp_path / "imgs"))])
    torch.testing.assert_close(matched.embeddings[:, 0], enc.encode(x), rtol=0, atol=1e-6)
    torch.testing.assert_close(matched.embeddings[:, 1], enc.encode(x.flip(-1)), rtol=0, atol=1e-6)
    assert (default.embeddings - matched.embeddings).abs().max() > 1e-3  # the default view is another image
    assert matched.meta["matched_view"] and matched.meta["encoder"]["preprocess"]["size"] == 32
    assert not default.meta["matched_view"] and default.meta["encoder"]["preprocess"]["size"] == 40
    _pipeline_keeps_the_view(matched, tmp_path, tmp_path / "imgs" / "0.png")


def _pipeline_keeps_the_view(cache, tmp_path, image):
    """Training's encoder takes the cache's view, and so does the pipeline it exports and reloads."""
    from rcdm import RCDMPipeline, RCDMUNet
    from rcdm.schedulers import make_scheduler, training_scheduler
    from rcdm.training.setup import load_cache_encoder

    encoder = load_cache_encoder(cache)
    unet = RCDMUNet(embedding_dim=encoder.dim, sample_size=32, **TINY_UNET)
    RCDMPipeline(unet=unet, scheduler=make_scheduler("ddim", training_scheduler().config),
                 encoder=encoder).save_pretrained(tmp_path / "pipe")
    pipe = RCDMPipeline.from_pretrained(tmp_path / "pipe")
    assert pipe.encoder.preprocess.to_dict() == cache.meta["encoder"]["preprocess"]
    torch.testing.assert_close(pipe.encode([Image.open(image)])[0], cache.embeddings[0, 0], rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------------ subprocesses
def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}


@pytest.mark.slow  # subprocess
def test_two_processes_embed_what_one_does(tmp_path, tiny_npz, tiny_encoder_dir, ref):
    out = tmp_path / "emb.safetensors"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "rcdm.cli", "embed",
           "--encoder", f"file:{tiny_encoder_dir}", "--data", str(tiny_npz), "--out", str(out),
           "--chunk-size", "16", "--batch-size", "8"]
    res = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("wrote ") == 1  # the main process reports
    two = EmbeddingCache.load(out)
    assert torch.equal(two.indices, ref.indices) and torch.equal(two.labels, ref.labels)
    torch.testing.assert_close(two.embeddings, ref.embeddings, rtol=1e-6, atol=1e-6)
    for a, b in zip(two.stats, ref.stats):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.slow  # subprocess
def test_sigkill_then_the_same_command_finishes_the_same_cache(tmp_path, cifar_npz, tiny_encoder_dir, capsys):
    data = _subset_npz(cifar_npz, tmp_path / "d.npz", 2048)
    out = tmp_path / "emb.safetensors"
    flags = ["--encoder", f"file:{tiny_encoder_dir}", "--data", str(data), "--chunk-size", "64", "--batch-size", "32",
             "--num-workers", "0"]
    proc = subprocess.Popen([sys.executable, "-m", "rcdm.cli", "embed", *flags, "--out", str(out)], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_some_chunks(str(out) + ".partial", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = _done(str(out) + ".partial")
    assert 64 <= done < 2048 and not out.exists()
    resumed = _embed(tiny_encoder_dir, data, out, *flags[4:])
    assert f"{done} of 2048 images already embedded" in capsys.readouterr().out
    assert resumed.meta["num_rows"] == 2048
    _same(resumed, _embed(tiny_encoder_dir, data, tmp_path / "straight.safetensors", *flags[4:]))


def _wait_for_some_chunks(partial, proc, timeout=120):
    """Returns once the partial file has at least one committed chunk (polled every 10 ms)."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        assert proc.poll() is None, "the embedding finished before it could be killed"
        if os.path.exists(partial) and _done(partial):
            return
        time.sleep(0.01)
    raise AssertionError("no chunk was committed in time")


def _done(partial) -> int:
    with RowFile(partial) as f:
        return int((f.read("status", 0, f.rows("status")) == DONE).sum())


def test_rss_benchmark_measures_and_cleans_up(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "embed_rss.py"
    spec = importlib.util.spec_from_file_location("embed_rss", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    row = bench.measure(300, 64, str(tmp_path), "float16")
    assert row["items"] == 300 and row["peak_rss_mib"] >= row["start_rss_mib"] > 0 and row["after_load_file_mib"] > 0
    assert not list(tmp_path.iterdir())  # the cache is deleted
