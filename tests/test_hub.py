"""Models by Hub id (issue 33, item 3): names resolve to directories, Hub repos load from a real HF cache layout
offline with `revision=` honoured, a missing one fails fast with one clear line, and push_to_hub uploads a directory
that loads back. Every repo id here is fake ("rcdm-test/..."); nothing reaches the network (HF_HUB_OFFLINE=1)."""
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch

from conftest import make_tiny_pipeline
from rcdm import RCDMPipeline
from rcdm.hub import is_hub_id, resolve_model_path
from rcdm.pipeline import read_meta, recorded_sampling, shipped_models

REPO = "rcdm-test/tiny"
MAIN, V2 = "a" * 40, "b" * 40  # commit hashes of the two snapshots


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _add_snapshot(cache: Path, repo: str, commit: str, src: Path, refs: tuple[str, ...] = ()) -> Path:
    """huggingface_hub's cache layout: models--org--name/blobs/<sha256>, snapshots/<commit>/<path> -> a relative
    symlink to its blob, refs/<ref> holding the commit hash."""
    root = cache / f"models--{repo.replace('/', '--')}"
    snap = root / "snapshots" / commit
    for f in sorted(p for p in Path(src).rglob("*") if p.is_file()):
        data = f.read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snap / f.relative_to(src)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for ref in refs:
        (root / "refs").mkdir(exist_ok=True)
        (root / "refs" / ref).write_text(commit)
    return snap


@pytest.fixture(scope="module")
def second_pipeline_dir(tmp_path_factory, tiny_encoder_dir):
    """The tiny model with other denoiser weights: tells the two snapshots apart."""
    return make_tiny_pipeline(tmp_path_factory.mktemp("pipe2") / "tiny-rcdm-2", tiny_encoder_dir, seed=1)


@pytest.fixture
def hub_cache(tmp_path, tiny_pipeline_dir, second_pipeline_dir):
    """A HF cache holding REPO: `main` -> the tiny model, `v2` -> the second one."""
    cache = tmp_path / "hf-cache"
    _add_snapshot(cache, REPO, MAIN, tiny_pipeline_dir, refs=("main",))
    _add_snapshot(cache, REPO, V2, second_pipeline_dir, refs=("v2",))
    return cache


def _weight(pipe) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in pipe.unet.parameters()])


def _samples(pipe, seed=0):
    pipe.set_progress_bar_config(disable=True)
    return pipe(embeddings=torch.ones(1, pipe.encoder.dim), num_samples=2, num_inference_steps=2, output_type="pt",
                generator=torch.Generator().manual_seed(seed)).images


@pytest.mark.parametrize("name, hub", [("org/name", True), ("rcdm-test/tiny.v2", True), ("./org/name", False),
                                       ("/abs/dir", False), ("a/b/c", False), ("org/../x", False),
                                       ("rcdm-cifar10-backbone", False), ("rcdm-imagenet128-dino-trunk@d/f.pt", False),
                                       (Path("org/name"), False)])
def test_what_counts_as_a_hub_id(name, hub):
    assert is_hub_id(name) is hub


def test_offline_load_from_the_hub_cache_honours_revision(hub_cache, tiny_pipeline_dir, second_pipeline_dir):
    main = RCDMPipeline.from_pretrained(REPO, cache_dir=hub_cache)
    assert resolve_model_path(REPO, cache_dir=hub_cache) == hub_cache / "models--rcdm-test--tiny" / "snapshots" / MAIN
    local = RCDMPipeline.from_pretrained(tiny_pipeline_dir)
    assert torch.equal(_samples(main), _samples(local))  # the encoder travelled in the snapshot: same embeddings too
    v2 = RCDMPipeline.from_pretrained(REPO, revision="v2", cache_dir=hub_cache)
    by_hash = RCDMPipeline.from_pretrained(REPO, revision=V2, cache_dir=hub_cache)
    other = RCDMPipeline.from_pretrained(second_pipeline_dir)
    assert torch.equal(_weight(v2), _weight(other)) and torch.equal(_weight(by_hash), _weight(other))
    assert not torch.equal(_weight(v2), _weight(main))
    assert read_meta(REPO, revision="v2", cache_dir=hub_cache)["encoder"]["dim"] == main.encoder.dim


def test_hf_hub_cache_default_and_the_cli_take_hub_ids(hub_cache, tmp_path, monkeypatch, cifar_test_images):
    from huggingface_hub import constants

    from rcdm.cli import main as cli_main

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))  # what HF_HUB_CACHE sets at import
    assert recorded_sampling(REPO) == RCDMPipeline.from_pretrained(REPO).sampling_defaults
    img = tmp_path / "in.png"
    cifar_test_images[0][0].save(img)
    out = tmp_path / "grid.png"
    assert cli_main(["sample", "--model", REPO, "--image", str(img), "--num-samples", "2", "--num-inference-steps", "2",
                     "--device", "cpu", "--out", str(out)]) == 0
    assert out.is_file()


def test_offline_without_a_cached_copy_fails_fast_with_one_clear_line(tmp_path, capsys):
    t0 = time.perf_counter()
    with pytest.raises(FileNotFoundError) as e:
        RCDMPipeline.from_pretrained("rcdm-test/absent", cache_dir=tmp_path / "empty-cache")
    elapsed = time.perf_counter() - t0
    msg = str(e.value)
    assert "\n" not in msg and elapsed < 10, (elapsed, msg)  # measured about 0.03 s
    for part in ("'rcdm-test/absent'", "not in the Hugging Face cache", str(tmp_path / "empty-cache"),
                 "HF_HUB_OFFLINE=1", "hf download rcdm-test/absent"):
        assert part in msg, msg
    from PIL import Image

    from rcdm.cli import main as cli_main

    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    assert cli_main(["sample", "--model", "rcdm-test/absent", "--image", str(tmp_path / "x.png"),
                     "--out", str(tmp_path / "g.png")]) == 2
    err = capsys.readouterr().err
    assert "'rcdm-test/absent'" in err and "not in the Hugging Face cache" in err and len(err.strip().splitlines()) == 1


def test_a_revision_missing_from_the_cache_is_named(hub_cache):
    with pytest.raises(FileNotFoundError, match=r"revision 'v3'.*not in the Hugging Face cache.*--revision v3"):
        RCDMPipeline.from_pretrained(REPO, revision="v3", cache_dir=hub_cache)


def test_a_local_path_wins_over_a_hub_id(hub_cache, second_pipeline_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(second_pipeline_dir, tmp_path / REPO)  # ./rcdm-test/tiny, spelled like the cached repo
    pipe = RCDMPipeline.from_pretrained(REPO, cache_dir=hub_cache)
    assert torch.equal(_weight(pipe), _weight(RCDMPipeline.from_pretrained(second_pipeline_dir)))
    with pytest.raises(ValueError, match="revision='v2' applies to Hub repo ids"):
        RCDMPipeline.from_pretrained(REPO, revision="v2", cache_dir=hub_cache)
    (tmp_path / "rcdm-test" / "plain").mkdir()  # a local directory that is no model: named, never looked up
    with pytest.raises(FileNotFoundError, match="'rcdm-test/plain' exists but holds no rcdm_pipeline.json"):
        RCDMPipeline.from_pretrained("rcdm-test/plain", cache_dir=hub_cache)


def test_a_hub_repo_that_is_no_rcdm_pipeline_is_named(tmp_path, tiny_pipeline_dir):
    src = tmp_path / "plain-diffusers"
    shutil.copytree(tiny_pipeline_dir / "unet", src / "unet")
    _add_snapshot(tmp_path / "c", "rcdm-test/unet-only", MAIN, src, refs=("main",))
    with pytest.raises(FileNotFoundError, match="'rcdm-test/unet-only'.*holds no rcdm_pipeline.json"):
        RCDMPipeline.from_pretrained("rcdm-test/unet-only", cache_dir=tmp_path / "c")


class FakeHfApi:
    """huggingface_hub.HfApi as push_to_hub uses it; `upload_folder` keeps a copy of what would be uploaded."""

    calls: list = []
    uploaded: Path

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, **kw):
        FakeHfApi.calls.append(("create_repo", repo_id, kw))

    def upload_folder(self, *, repo_id, folder_path, **kw):
        FakeHfApi.calls.append(("upload_folder", repo_id, kw))
        shutil.copytree(folder_path, FakeHfApi.uploaded)
        return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/{'c' * 40}"})()


def test_push_to_hub_uploads_a_directory_that_loads_back(tiny_pipeline_dir, tmp_path, monkeypatch):
    import huggingface_hub

    src = tmp_path / "model"
    shutil.copytree(tiny_pipeline_dir, src)
    (src / "README.md").write_text("# tiny card")
    pipe = RCDMPipeline.from_pretrained(src)
    FakeHfApi.calls, FakeHfApi.uploaded = [], tmp_path / "uploaded"
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    url = pipe.push_to_hub("rcdm-test/pushed", private=True, token="hf_fake")
    assert url == f"https://huggingface.co/rcdm-test/pushed/commit/{'c' * 40}"
    (create, repo, kw), (upload, repo2, kw2) = FakeHfApi.calls
    assert (create, repo, upload, repo2) == ("create_repo", "rcdm-test/pushed", "upload_folder", "rcdm-test/pushed")
    assert kw["exist_ok"] is True and kw["private"] is True and kw2["commit_message"]
    up = FakeHfApi.uploaded
    assert {p.name for p in up.iterdir()} == {"unet", "scheduler", "encoder", "rcdm_pipeline.json",
                                              "model_index.json", "README.md"}
    shutil.rmtree(src)  # nothing outside the uploaded folder is needed to load it
    again = RCDMPipeline.from_pretrained(up)
    assert torch.equal(_samples(again), _samples(pipe))


def test_shipped_models_are_self_contained_diffusers_directories():
    from rcdm.encoders import load_encoder

    models = shipped_models()
    assert len(models) == 2
    for d in models:
        meta = read_meta(d)
        spec = meta["encoder"]["spec"]
        assert spec == "pretrained:simclr-cifar10-r18w32", spec  # resolves wherever rcdm is installed
        index = json.loads((d / "model_index.json").read_text())
        unet_cls = json.loads((d / "unet" / "config.json").read_text())["_class_name"]
        sched_cls = json.loads((d / "scheduler" / "scheduler_config.json").read_text())["_class_name"]
        assert index["_class_name"] == "RCDMPipeline" and index["_diffusers_version"]
        assert index["unet"] == ["rcdm.model", unet_cls] and index["scheduler"] == ["diffusers", sched_cls]
    enc = load_encoder("pretrained:simclr-cifar10-r18w32")
    assert enc.fingerprint() == read_meta(models[0])["encoder"]["fingerprint"]  # the weights did not change
    with pytest.raises(ValueError, match="not a path"):
        load_encoder("pretrained:../simclr-cifar10-r18w32")
