"""Encoder registry: official-release key layouts (fake checkpoints built here), torchvision/timm/file specs,
layer read-outs, preprocessing, encode() and safe loading. CPU-only, tiny inputs."""
import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from PIL import Image

from rcdm.data import ImageError

from rcdm.encoders import IMAGENET_PREPROCESS, RELEASES, FrozenEncoder, Preprocess, list_encoders, load_encoder
from rcdm.encoders.cifar import CIFAR_MEAN, CIFAR_STD, SSLEncoder
from rcdm.ssl import SSLConfig, save_encoder


def _noisy(state):
    """Small random rescaling, so that loaded weights cannot equal a fresh init by accident."""
    g = torch.Generator().manual_seed(0)
    return {k: v * (1 + 0.01 * torch.rand(v.shape, generator=g)) if v.is_floating_point() else v
            for k, v in state.items()}


def _sd(*layers):
    return _noisy(nn.Sequential(*layers).state_dict())


def _pre(prefix, state):
    return {prefix + k: v for k, v in state.items()}


def _random_state(build):
    """The state-dict layout of `build()` filled with uniform noise, skipping the (slow) weight init."""
    with torch.device("meta"):
        model = build()
    g = torch.Generator().manual_seed(0)
    return {k: torch.rand(v.shape, generator=g) * 0.02 if v.is_floating_point() else torch.zeros((), dtype=v.dtype)
            for k, v in model.state_dict().items()}


def _resnet50_trunk():
    model = torchvision.models.resnet50()
    model.fc = nn.Identity()  # every release's trunk has no fc
    return model


@pytest.fixture(scope="module")
def r50():
    return _random_state(_resnet50_trunk)


@pytest.fixture(scope="module")
def vits():
    timm = pytest.importorskip("timm")
    return _random_state(lambda: timm.create_model("vit_small_patch16_224", num_classes=0))


def exclude_bias_and_norm(p):  # what VICReg / Barlow Twins pickle into their optimizer state, as __main__.*
    return p.ndim == 1


exclude_bias_and_norm.__module__ = "__main__"


@pytest.fixture
def lars_state(monkeypatch):
    """An optimizer state_dict as VICReg / Barlow Twins save it: their LARS keeps a function in param_groups."""
    monkeypatch.setattr(sys.modules["__main__"], "exclude_bias_and_norm", exclude_bias_and_norm, raising=False)
    return {"state": {}, "param_groups": [{"lr": 0.0, "weight_decay_filter": exclude_bias_and_norm,
                                          "lars_adaptation_filter": exclude_bias_and_norm, "params": [0]}]}


# Each fake: (checkpoint, dict holding the trunk keys, a trunk key, expected model state, (backbone, projector) dims).
# Head hidden widths are shrunk to 64 to keep files small (an 8192^2 matrix is 268 MB); the loader reads widths from
# the tensors, so keys, layer types and input/output widths are the releases' own.
def fake_dino_resnet50(r50, vits, opt):
    head = _sd(nn.Linear(2048, 64), nn.BatchNorm1d(64), nn.GELU(), nn.Linear(64, 256))  # 4096 hidden in the release
    teacher = _pre("module.backbone.", r50) | _pre("module.head.mlp.", head)
    teacher["module.head.last_layer.weight"] = torch.randn(100, 256)  # 60000 prototypes in the release
    ckpt = {"teacher": teacher, "student": {"module.backbone.conv1.weight": torch.zeros(1)}, "optimizer": opt,
            "epoch": 100, "args": argparse.Namespace(arch="resnet50", out_dim=60000),
            "dino_loss": {"center": torch.zeros(1, 100)}}
    expected = _pre("backbone.", r50) | _pre("projector.", head)
    return ckpt, teacher, "module.backbone.layer1.0.conv1.weight", expected, (2048, 256)


def fake_dino_vits16(r50, vits, opt):
    head = _sd(nn.Linear(384, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 256))  # 2048 hidden
    teacher = _pre("backbone.", vits) | _pre("head.mlp.", head)
    teacher |= {"head.last_layer.weight_g": torch.ones(100, 1), "head.last_layer.weight_v": torch.randn(100, 256)}
    ckpt = {"teacher": teacher, "epoch": 300, "args": argparse.Namespace(arch="vit_small", patch_size=16)}
    expected = _pre("backbone.", vits) | _pre("projector.", head)
    return ckpt, teacher, "backbone.blocks.3.attn.qkv.weight", expected, (384, 256)


def fake_vicreg_resnet50(r50, vits, opt):
    head = _sd(nn.Linear(2048, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 64), nn.BatchNorm1d(64), nn.ReLU(),
               nn.Linear(64, 8192, bias=False))
    model = _pre("module.backbone.", r50) | _pre("module.projector.", head)
    return ({"epoch": 1000, "model": model, "optimizer": opt}, model, "module.backbone.layer1.0.conv1.weight",
            _pre("backbone.", r50) | _pre("projector.", head), (2048, 8192))


def fake_barlowtwins_resnet50(r50, vits, opt):
    head = _sd(nn.Linear(2048, 64, bias=False), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 64, bias=False),
               nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 8192, bias=False))
    model = _pre("module.backbone.", r50) | _pre("module.projector.", head)
    model |= _pre("module.bn.", nn.BatchNorm1d(8192, affine=False).state_dict())
    return ({"epoch": 1000, "model": model, "optimizer": opt}, model, "module.backbone.layer1.0.conv1.weight",
            _pre("backbone.", r50) | _pre("projector.", head), (2048, 8192))


def _vissl(r50, heads):
    trunk = _pre("_feature_blocks.", r50)
    return {"classy_state_dict": {"base_model": {"model": {"trunk": trunk, "heads": heads}}, "phase_idx": 999}}, trunk


def fake_barlowtwins_resnet50_vissl(r50, vits, opt):
    blocks = [_sd(nn.Linear(2048, 64, bias=False), nn.BatchNorm1d(64)), _sd(nn.Linear(64, 64, bias=False),
              nn.BatchNorm1d(64)), _sd(nn.Linear(64, 8192, bias=False))]
    heads = {f"{i}.clf.{k}": v for i, b in enumerate(blocks) for k, v in b.items()}
    ckpt, trunk = _vissl(r50, heads)
    slot = {"0": "0", "1": "1"}, {"0": "3", "1": "4"}, {"0": "6"}  # VISSL block.clf.j -> one nn.Sequential index
    expected = {f"projector.{slot[i][k[0]]}{k[1:]}": v for i, b in enumerate(blocks) for k, v in b.items()}
    return ckpt, trunk, "_feature_blocks.layer1.0.conv1.weight", _pre("backbone.", r50) | expected, (2048, 8192)


def fake_simclr_resnet50(r50, vits, opt):
    l1, l2 = _noisy(nn.Linear(2048, 64).state_dict()), _noisy(nn.Linear(64, 128).state_dict())  # 2048 hidden
    ckpt, trunk = _vissl(r50, _pre("0.clf.0.", l1) | _pre("1.clf.0.", l2))
    expected = _pre("backbone.", r50) | _pre("projector.0.", l1) | _pre("projector.2.", l2)
    return ckpt, trunk, "_feature_blocks.layer1.0.conv1.weight", expected, (2048, 128)


def fake_mocov3_resnet50(r50, vits, opt):
    fc = _sd(nn.Linear(2048, 64, bias=False), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 256, bias=False),
             nn.BatchNorm1d(256, affine=False))  # 4096 hidden in the release
    pred = _sd(nn.Linear(256, 64, bias=False), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 256, bias=False))
    state = _pre("module.base_encoder.", r50) | _pre("module.base_encoder.fc.", fc)
    state |= _pre("module.momentum_encoder.", r50) | _pre("module.momentum_encoder.fc.", fc)  # shared storage
    state |= _pre("module.predictor.", pred)
    ckpt = {"epoch": 1000, "arch": "resnet50", "state_dict": state, "optimizer": opt, "scaler": {"scale": 1024.0}}
    expected = _pre("backbone.", r50) | _pre("projector.", fc)
    return ckpt, state, "module.base_encoder.layer1.0.conv1.weight", expected, (2048, 256)


FAKES = {name[len("fake_"):]: fn for name, fn in globals().items() if name.startswith("fake_")}


def test_every_release_has_a_fake():
    assert sorted(FAKES) == sorted(RELEASES)


QUICK_RELEASES = {"simclr_resnet50", "dino_vits16"}  # one ResNet and one ViT layout in the quick lane


@pytest.mark.parametrize("name", [n if n in QUICK_RELEASES else pytest.param(n, marks=pytest.mark.slow)
                                  for n in sorted(FAKES)])
def test_release_layout_loads_strictly(name, r50, vits, lars_state, tmp_path):
    ckpt, _, _, expected, (d_bb, d_proj) = FAKES[name](r50, vits, lars_state)
    torch.save(ckpt, tmp_path / "release.pth")
    enc = load_encoder(f"{name}@release.pth", "backbone+projector", base_dir=tmp_path)
    assert enc.spec == f"{name}@release.pth" and enc.dim == d_bb + d_proj
    state = enc.net.state_dict()
    assert sorted(state) == sorted(expected)
    assert all(torch.equal(state[k], v) for k, v in expected.items())
    assert enc.net.projector(torch.zeros(2, d_bb)).shape == (2, d_proj)
    interpolation = "bicubic" if name.startswith("dino_") else "bilinear"  # DINO's eval resizes bicubically
    assert enc.preprocess == replace(IMAGENET_PREPROCESS, interpolation=interpolation)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FAKES))
def test_release_with_a_renamed_key_is_refused(name, r50, vits, lars_state, tmp_path):
    ckpt, trunk, key, _, _ = FAKES[name](r50, vits, lars_state)
    trunk[key.replace("conv1", "conv_1").replace("qkv", "q_kv")] = trunk.pop(key)
    torch.save(ckpt, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=name) as e:
        load_encoder(f"{name}@{tmp_path / 'bad.pth'}")
    tail = key[key.index("layer1") if "layer1" in key else key.index("blocks"):]
    assert f"backbone.{tail}" in str(e.value)  # the missing key is named


def test_release_with_a_missing_head_tensor_is_refused(r50, lars_state, tmp_path):
    ckpt, model, _, _, _ = fake_vicreg_resnet50(r50, None, lars_state)
    del model["module.projector.6.weight"]
    torch.save(ckpt, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"vicreg_resnet50.*'6\.weight'"):
        load_encoder(f"vicreg_resnet50@{tmp_path / 'bad.pth'}")


def test_release_read_out_is_the_head_on_the_pooled_trunk(r50, lars_state, tmp_path):
    ckpt, *_ = fake_vicreg_resnet50(r50, None, lars_state)
    torch.save(ckpt, tmp_path / "v.pth")
    enc = load_encoder(f"vicreg_resnet50@{tmp_path / 'v.pth'}", "backbone+projector")
    pre = Preprocess(40, 32, IMAGENET_PREPROCESS.mean, IMAGENET_PREPROCESS.std)  # ResNets take any size: CPU-cheap
    x = torch.rand(2, 3, 50, 40)
    with torch.no_grad():
        mean, std = torch.tensor(pre.mean).view(1, 3, 1, 1), torch.tensor(pre.std).view(1, 3, 1, 1)
        # 50x40, short side already 40: no resize; the 32 centre crop starts at row round(9), column round(4)
        h = enc.net.backbone((x[..., 9:41, 4:36] - mean) / std)  # (2, 2048)
        want = torch.cat([h, enc.net.projector(h)], 1)  # (2, 2048 + 8192)
    torch.testing.assert_close(FrozenEncoder(enc.net, enc.spec, enc.layer, pre)(x), want)


def test_backbone_only_release_file(r50, tmp_path):
    torch.save(r50, tmp_path / "resnet50.pth")  # Barlow Twins' resnet50.pth: the trunk's state dict alone
    enc = load_encoder("barlowtwins_resnet50@resnet50.pth", base_dir=tmp_path)
    assert enc.dim == 2048
    with pytest.raises(ValueError, match="no projector"):
        FrozenEncoder(enc.net, enc.spec, "projector", enc.preprocess)


class _Payload:
    """Unpickling this would create a file: the loader must refuse it instead."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return Path.touch, (Path(self.path),)


def test_pickled_objects_are_refused_not_executed(r50, tmp_path):
    flag = tmp_path / "executed"
    torch.save({"model": _pre("module.backbone.", r50), "extra": _Payload(flag)}, tmp_path / "evil.pth")
    for spec in ("vicreg_resnet50@evil.pth", "torchvision:resnet18@evil.pth"):
        with pytest.raises(ValueError, match="refused to unpickle"):
            load_encoder(spec, base_dir=tmp_path)
    assert not flag.exists()
    (tmp_path / "garbage.pth").write_bytes(b"\x80\x02not a checkpoint")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        load_encoder("dino_resnet50@garbage.pth", base_dir=tmp_path)


# ---------------------------------------------------------------- torchvision / timm


@pytest.fixture(scope="module")
def resnet18():
    return load_encoder("torchvision:resnet18")


def test_torchvision_random_and_named_layers(resnet18):
    assert resnet18.dim == 512 and resnet18.preprocess == IMAGENET_PREPROCESS
    pre = Preprocess(72, 64, IMAGENET_PREPROCESS.mean, IMAGENET_PREPROCESS.std)  # small input: CPU-cheap
    x = torch.rand(2, 3, 30, 40)
    m = resnet18.net.backbone
    with torch.no_grad():
        mean, std = torch.tensor(pre.mean).view(1, 3, 1, 1), torch.tensor(pre.std).view(1, 3, 1, 1)
        # 30x40 -> short side 72: 72x96 (antialiased bilinear), then the 64 centre crop at row 4, column 16
        big = F.interpolate(x, size=(72, 96), mode="bilinear", antialias=True, align_corners=False)
        h = (big[..., 4:68, 16:80] - mean) / std
        l3 = m.layer3(m.layer2(m.layer1(m.maxpool(m.relu(m.bn1(m.conv1(h)))))))  # (2, 256, 4, 4)
        want = torch.cat([m.layer4(l3).mean((2, 3)), l3.mean((2, 3))], 1)  # (2, 512 + 256)
    both = FrozenEncoder(resnet18.net, resnet18.spec, "backbone + layer3", pre)
    assert both.dim == 768
    torch.testing.assert_close(both(x), want, rtol=1e-4, atol=1e-4)
    same = FrozenEncoder(resnet18.net, resnet18.spec, "backbone.layer3", pre)
    torch.testing.assert_close(same(x), want[:, 512:], rtol=1e-4, atol=1e-4)


def test_unknown_layers_and_missing_projector(resnet18):
    with pytest.raises(ValueError, match="layer3"):
        FrozenEncoder(resnet18.net, resnet18.spec, "layer33", resnet18.preprocess)
    with pytest.raises(ValueError, match="no projector"):
        FrozenEncoder(resnet18.net, resnet18.spec, "backbone+projector", resnet18.preprocess)
    with pytest.raises(ValueError, match="empty"):
        FrozenEncoder(resnet18.net, resnet18.spec, "backbone+", resnet18.preprocess)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_torchvision_local_weights(suffix, tmp_path):
    from safetensors.torch import save_file

    state = _noisy(torchvision.models.resnet18().state_dict())  # with the fc classifier, which is dropped
    path = tmp_path / f"w{suffix}"
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    enc = load_encoder(f"torchvision:resnet18@w{suffix}", base_dir=tmp_path)
    got = enc.net.backbone.state_dict()
    assert sorted(got) == sorted(k for k in state if not k.startswith("fc."))
    assert all(torch.equal(v, state[k]) for k, v in got.items())


def test_torchvision_spec_errors(tmp_path):
    with pytest.raises(ValueError, match="resnet18"):
        load_encoder("torchvision:resnet1")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_encoder("torchvision:resnet18@nope.pth", base_dir=tmp_path)
    from rcdm.encoders.builders import _torchvision_preprocess  # published weights need a download; their preprocessing not

    w = torchvision.models.ResNet50_Weights.IMAGENET1K_V2
    assert _torchvision_preprocess(w) == Preprocess(232, 224, IMAGENET_PREPROCESS.mean, IMAGENET_PREPROCESS.std)


def test_timm_cls_token_and_local_weights(tmp_path):
    timm = pytest.importorskip("timm")
    enc = load_encoder("timm:test_vit")
    assert enc.preprocess.crop == 160 and enc.dim == enc.net.backbone.num_features
    x = torch.rand(1, 3, 160, 160)
    tokens = []
    hook = enc.net.backbone.blocks[0].register_forward_hook(lambda m, i, o: tokens.append(o))
    layer = FrozenEncoder(enc.net, enc.spec, "blocks.0", enc.preprocess)
    out = layer(x)
    hook.remove()
    torch.testing.assert_close(out, tokens[-1][:, 0])  # (B, N, C) tokens -> CLS

    state = _noisy(timm.create_model("test_resnet").state_dict())  # has the "fc" classifier
    torch.save(state, tmp_path / "r.pth")
    got = load_encoder(f"timm:test_resnet@{tmp_path / 'r.pth'}").net.backbone.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in got.items()) and "fc.weight" not in got


# ---------------------------------------------------------------- file: encoders and encode()


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("enc")
    torch.manual_seed(0)
    model = SSLEncoder(width=8, proj_hidden=16, proj_out=8)
    model.load_state_dict(_noisy(model.state_dict()))
    save_encoder(model, SSLConfig(data="-", out=str(root / "tiny"), width=8, proj_hidden=16, proj_out=8), {})
    return root, model.eval()


def _manual(model, x01, lo=0.0, hi=1.0, mean=CIFAR_MEAN, std=CIFAR_STD):
    x = (x01 * (hi - lo) + lo - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        h = model.backbone(x)
        return torch.cat([h, model.projector(h)], 1)


def test_file_encoder(cifar_dir, monkeypatch):
    root, model = cifar_dir
    enc = load_encoder("file:tiny", "backbone+projector", base_dir=root)
    assert enc.spec == "file:tiny" and enc.dim == 64 + 8
    assert enc.preprocess == Preprocess(32, 32, CIFAR_MEAN, CIFAR_STD)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in enc.net.state_dict().items())
    x = torch.rand(3, 3, 32, 32)
    torch.testing.assert_close(enc(x), _manual(model, x))
    monkeypatch.chdir(root)  # relative paths without base_dir: the working directory
    assert load_encoder("file:tiny/model.safetensors").dim == 64
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        load_encoder("file:missing_dir", base_dir=root)


def test_pixel_range_is_applied(cifar_dir, tmp_path):
    root, model = cifar_dir
    cfg = json.loads((root / "tiny" / "config.json").read_text())
    cfg["preprocess"].update(pixel_range=[-1, 1], mean=[0, 0, 0], std=[1, 1, 1])
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "model.safetensors").write_bytes((root / "tiny" / "model.safetensors").read_bytes())
    enc = load_encoder(f"file:{tmp_path}", "backbone+projector")
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(enc(x), _manual(model, x, -1.0, 1.0, (0, 0, 0), (1, 1, 1)))


def _images():
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (30, 45, 3), dtype=np.uint8))
    return [rgb, rgb.convert("RGBA").resize((33, 33)), rgb.convert("L").resize((50, 40)),
            rgb.convert("P").resize((32, 48)), Image.fromarray(rng.integers(0, 65535, (36, 36), dtype=np.uint16))]


def test_encode_pil_matches_tensor(cifar_dir):
    from rcdm.data import open_image, pil_to_uint8

    root, _ = cifar_dir
    enc = load_encoder("file:tiny", "backbone+projector", base_dir=root)
    images = _images()
    assert images[-1].mode in ("I;16", "I;16L")
    got = enc.encode(images, batch_size=2)
    assert got.shape == (5, enc.dim) and got.dtype == torch.float32
    want = torch.cat([enc.encode(pil_to_uint8(open_image(im))[None].float() / 255) for im in images])
    torch.testing.assert_close(got, want, rtol=0.05, atol=0.05)  # uint8 rounding after the PIL-path resize
    assert enc.encode([]).shape == (0, enc.dim)
    with pytest.raises(ImageError):
        enc.encode([b"not an image"])


def test_encode_tensor_batches_autocast_grads_and_eval(cifar_dir):
    root, _ = cifar_dir
    enc = load_encoder("file:tiny", "backbone", base_dir=root)
    x = torch.rand(5, 3, 48, 40)
    full = enc.encode(x)
    torch.testing.assert_close(enc.encode(x, batch_size=2), full)
    x8 = (x * 255).round().to(torch.uint8)  # uint8 batches (decoded datasets) are accepted too
    torch.testing.assert_close(enc.encode(x8), enc.encode(x8.float() / 255))
    bf16 = enc.encode(x, autocast_dtype=torch.bfloat16)
    assert bf16.dtype == torch.float32 and (bf16 - full).abs().max() < 0.1 * full.abs().max()
    x.requires_grad_(True)
    enc(x).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in enc.parameters())
    enc.train()
    assert not any(m.training for m in enc.modules())


def test_config_and_registry(cifar_dir):
    root, _ = cifar_dir
    enc = load_encoder("file:tiny", "projector", base_dir=root)
    cfg = json.loads(json.dumps(enc.config()))
    assert cfg["spec"] == "file:tiny" and cfg["layer"] == "projector" and cfg["dim"] == 8
    assert Preprocess.from_dict(cfg["preprocess"]) == enc.preprocess
    names = list_encoders()
    assert all(any(n.startswith(r) for n in names) for r in RELEASES)
    with pytest.raises(ValueError, match="dino_resnet50"):
        load_encoder("dino_resnet51")
    with pytest.raises(ValueError, match="torchvision:ARCH"):
        load_encoder("nonsense:thing")


def test_bad_weight_files_are_one_line_errors(tmp_path):
    """Every way a weights file can be bad gives one line naming the file and what to do (was: an EOFError with no
    message, a KeyError '101', a bare SafetensorError, or torch's shape report of 24-151 lines)."""
    from safetensors.torch import save_file

    state = torchvision.models.resnet18().state_dict()
    torch.save(state, tmp_path / "ok.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "ok.safetensors")
    for suffix in (".pth", ".safetensors"):
        blob = (tmp_path / f"ok{suffix}").read_bytes()
        (tmp_path / f"cut{suffix}").write_bytes(blob[: len(blob) // 2])
        (tmp_path / f"empty{suffix}").write_bytes(b"")
        (tmp_path / f"text{suffix}").write_text("weights are elsewhere\n")
    wide = {k: torch.zeros(v.shape[0] + 1, *v.shape[1:]) if v.ndim == 4 else v for k, v in state.items()}
    torch.save(wide, tmp_path / "wide.pth")
    cases = {"cut.pth": "truncated", "cut.safetensors": "truncated", "empty.pth": "is empty",
             "empty.safetensors": "is empty", "text.pth": "neither a PyTorch checkpoint",
             "text.safetensors": "neither a PyTorch checkpoint", "wide.pth": r"20 tensors do not fit the architecture"}
    for name, why in cases.items():
        with pytest.raises(ValueError) as info:
            load_encoder(f"torchvision:resnet18@{name}", base_dir=tmp_path)
        msg = str(info.value)
        assert why in msg and name in msg and len(msg.splitlines()) == 1 and len(msg) < 400, msg
    (tmp_path / "enc").mkdir()
    (tmp_path / "enc" / "config.json").write_text("{arch: ")
    save_file({"x": torch.zeros(1)}, tmp_path / "enc" / "model.safetensors")
    with pytest.raises(ValueError, match=r"enc/config\.json is not valid JSON"):
        load_encoder("file:enc", base_dir=tmp_path)
