"""Hub encoders, offline: `hf:` models saved with save_pretrained in the hub layout, `timm:NAME.TAG@PATH`, the ViT
read-outs (cls / mean / blocks.N), Preprocess.interpolation, and the solo-learn, lightly, MAE and I-JEPA checkpoint
layouts. Every embedding is checked against the library's own forward on the same preprocessed tensor."""
import json
import re
import shutil
import sys
from dataclasses import replace

import pytest
import torch
import torch.nn as nn
import torchvision

from rcdm.encoders import IMAGENET_PREPROCESS, RELEASES, FrozenEncoder, Preprocess, load_encoder
from rcdm.images import resize_center_crop

T = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
            patch_size=8)


def _noisy(state, seed=0):
    """Small random rescaling, so that loaded weights cannot equal a fresh init by accident."""
    g = torch.Generator().manual_seed(seed)
    return {k: v * (1 + 0.01 * torch.rand(v.shape, generator=g)) if v.is_floating_point() else v
            for k, v in state.items()}


# ---------------------------------------------------------------- hf: families in the hub's own layout

def _clip_full():  # openai/clip-* repos hold the whole CLIPModel (text tower too); rcdm loads the vision tower
    text = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=99)
    return T.CLIPModel(T.CLIPConfig(text_config=text, vision_config=TINY, projection_dim=16))


def _siglip_full():
    text = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=99)
    return T.SiglipModel(T.SiglipConfig(text_config=text, vision_config=TINY))


# name -> (hub-layout model, image processor, reference class + from_pretrained kwargs, backbone read-out, prefix)
# Read-outs: "pooler" = pooler_output, "cls" = last_hidden_state[:, 0], "mean" = mean of the patch tokens.
FAMILIES = {
    "dinov2": (lambda: T.Dinov2Model(T.Dinov2Config(**TINY)),
               lambda: T.BitImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32},
                                           image_mean=MEAN, image_std=STD, resample=3),
               (T.Dinov2Model, {}), "pooler", 1),
    "dinov2_registers": (lambda: T.Dinov2WithRegistersModel(T.Dinov2WithRegistersConfig(num_register_tokens=4,
                                                                                         **TINY)),
                         lambda: T.BitImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32},
                                                     image_mean=MEAN, image_std=STD, resample=3),
                         (T.Dinov2WithRegistersModel, {}), "pooler", 5),
    # facebook/vit-mae-* repos hold ViTMAEForPreTraining (the pixel decoder too)
    "vit_mae": (lambda: T.ViTMAEForPreTraining(T.ViTMAEConfig(decoder_hidden_size=16, decoder_num_hidden_layers=1,
                                                              decoder_num_attention_heads=2,
                                                              decoder_intermediate_size=32, **TINY)),
                lambda: T.ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=MEAN, image_std=STD),
                (T.ViTMAEModel, {"mask_ratio": 0.0}), "cls", 1),
    "ijepa": (lambda: T.IJepaModel(T.IJepaConfig(**TINY)),
              lambda: T.ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=MEAN, image_std=STD,
                                          resample=3),
              (T.IJepaModel, {}), "mean", 0),
    "data2vec_vision": (lambda: T.Data2VecVisionModel(T.Data2VecVisionConfig(**TINY)),
                        lambda: T.BeitImageProcessor(size={"height": 32, "width": 32}, do_center_crop=False,
                                                     image_mean=(0.5,) * 3, image_std=(0.5,) * 3),
                        (T.Data2VecVisionModel, {}), "mean", 1),
    "clip": (_clip_full, lambda: T.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32,
                                                                                             "width": 32}),
             (T.CLIPVisionModel, {}), "pooler", 1),
    "siglip": (_siglip_full, lambda: T.SiglipImageProcessor(size={"height": 32, "width": 32}, resample=2),
               (T.SiglipVisionModel, {}), "pooler", 0),
    "vit": (lambda: T.ViTModel(T.ViTConfig(**TINY), add_pooling_layer=False),
            lambda: T.ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=MEAN, image_std=STD,
                                        resample=3),
            (T.ViTModel, {"add_pooling_layer": False}), "cls", 1),
}


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """name -> a save_pretrained directory: config.json + model.safetensors + preprocessor_config.json."""
    root = tmp_path_factory.mktemp("hub")
    for i, (name, (build, processor, *_)) in enumerate(FAMILIES.items()):
        torch.manual_seed(i)
        model = build()
        model.load_state_dict(_noisy(model.state_dict(), i))  # e.g. LayerNorms away from (1, 0)
        model.save_pretrained(root / name)
        processor().save_pretrained(root / name)
    return root


def _reference(hub, name):
    """The transformers model exactly as transformers loads it, and its preprocessing, from the same directory."""
    _, _, (cls, kwargs), pool, prefix = FAMILIES[name]
    return cls.from_pretrained(hub / name, **kwargs).eval(), pool, prefix


def _direct(model, x01, pre: Preprocess):
    """The library's forward on the preprocessed tensor (x01 already crop x crop: no resize)."""
    lo, hi = pre.pixel_range
    x = ((x01 * (hi - lo) + lo) - torch.tensor(pre.mean).view(1, 3, 1, 1)) / torch.tensor(pre.std).view(1, 3, 1, 1)
    extra = {}
    if isinstance(model, T.ViTMAEModel):  # ids_restore order = identity: argsort of increasing noise
        extra["noise"] = torch.arange(16.0).expand(len(x), 16)
    with torch.no_grad():
        return model(pixel_values=x, output_hidden_states=True, **extra)


def _pool(tokens, how, prefix):
    return tokens[:, 0] if how == "cls" else tokens[:, prefix:].mean(1)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_hf_readouts_equal_the_transformers_forward(name, hub):
    ref, pool, prefix = _reference(hub, name)
    enc = load_encoder(f"hf:org/{name}@{name}", "backbone", base_dir=hub)
    x = torch.rand(2, 3, 32, 32)
    out = _direct(ref, x, enc.preprocess)
    lhs, hidden = out.last_hidden_state, out.hidden_states  # (2, N, 32), embeddings + one per block
    default = "cls" if prefix else "mean"
    want = {"backbone": out.pooler_output if pool == "pooler" else _pool(lhs, pool, prefix),
            "mean": lhs[:, prefix:].mean(1), "blocks.0": _pool(hidden[1], default, prefix),
            "blocks.1": _pool(hidden[2], default, prefix)}
    if prefix:
        want["cls"] = lhs[:, 0]
        want["cls+mean"] = torch.cat([lhs[:, 0], lhs[:, prefix:].mean(1)], 1)
    for layer, w in want.items():
        got = FrozenEncoder(enc.net, enc.spec, layer, enc.preprocess)
        assert got.dim == w.shape[1] == (64 if layer == "cls+mean" else 32), layer
        torch.testing.assert_close(got(x), w, rtol=0, atol=1e-5, msg=f"{name} {layer}")


def test_hf_preprocessing_comes_from_the_processor_config(hub):
    got = {name: load_encoder(f"hf:o/{name}@{hub / name}").preprocess for name in ("dinov2", "siglip", "clip")}
    assert got["dinov2"] == Preprocess(36, 32, MEAN, STD, interpolation="bicubic")
    assert got["siglip"] == Preprocess(32, 32, (0.5,) * 3, (0.5,) * 3, interpolation="bilinear", fit="squash")
    clip = T.CLIPImageProcessor()
    assert got["clip"] == Preprocess(32, 32, clip.image_mean, clip.image_std, interpolation="bicubic")
    enc = load_encoder(f"hf:o/dinov2@{hub / 'dinov2'}")
    assert enc.config()["preprocess"]["interpolation"] == "bicubic" and enc.spec == f"hf:o/dinov2@{hub / 'dinov2'}"


def _photo(box=None):
    """A real photograph (matplotlib's sample Grace Hopper, 512x600), or a crop of it: non-square either way."""
    from matplotlib import cbook
    from PIL import Image

    img = Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")
    return img.crop(box) if box else img


SQUASH = {"vit_mae", "ijepa", "data2vec_vision", "siglip", "vit"}  # processors that resize to height x width


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_hf_encoders_equal_the_hub_pipeline_on_non_square_photos(name, hub):
    """End to end against transformers: the directory's own processor (AutoImageProcessor, as saved by
    save_pretrained) and model, on photos 451x300 and 512x600. Squash processors resize straight to height x width
    (before: up to 2.0 apart on the 451x300 photo); the others keep the aspect ratio and centre-crop."""
    ref, pool, prefix = _reference(hub, name)
    processor = T.AutoImageProcessor.from_pretrained(hub / name)
    enc = load_encoder(f"hf:org/{name}@{name}", "backbone", base_dir=hub)
    assert enc.preprocess.fit == ("squash" if name in SQUASH else "crop")
    photos = [_photo((30, 100, 481, 400)), _photo()]
    pixels = torch.cat([processor(images=p, return_tensors="pt")["pixel_values"] for p in photos])  # (2, 3, 32, 32)
    extra = {"noise": torch.arange(16.0).expand(2, 16)} if isinstance(ref, T.ViTMAEModel) else {}
    with torch.no_grad():
        out = ref(pixel_values=pixels, **extra)
    want = out.pooler_output if pool == "pooler" else _pool(out.last_hidden_state, pool, prefix)
    torch.testing.assert_close(enc.encode(photos), want, rtol=0, atol=1e-5)  # measured <= 1.5e-6


def test_hf_mae_is_deterministic(hub):
    enc = load_encoder(f"hf:facebook/vit-mae-base@{hub / 'vit_mae'}", "cls+mean")
    x = torch.rand(3, 3, 40, 48)  # resized and cropped by the recorded preprocessing
    a, b = enc(x), enc(x)
    assert torch.equal(a, b) and enc.net.backbone.model.config.mask_ratio == 0.0
    assert torch.equal(enc(x[:1]), a[:1])  # no batch-dependent masking either


def test_hf_missing_weights_and_bad_specs_are_refused(hub, tmp_path):
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad"
    bad.mkdir()
    for f in ("config.json", "preprocessor_config.json"):
        (bad / f).write_bytes((hub / "dinov2" / f).read_bytes())
    state = load_file(str(hub / "dinov2" / "model.safetensors"))
    key = next(k for k in state if "layer.1.mlp.fc2.weight" in k)
    state[key.replace("fc2", "fc_2")] = state.pop(key)
    save_file(state, str(bad / "model.safetensors"))
    with pytest.raises(ValueError, match=r"missing .*layer\.1\.mlp\.fc2\.weight"):
        load_encoder(f"hf:o/x@{bad}")
    (bad / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ValueError, match="model_type 'bert' is not one rcdm reads.*dinov2"):
        load_encoder(f"hf:o/x@{bad}")
    with pytest.raises(OSError, match="hf:nobody/nothing-here.*save_pretrained"):
        load_encoder("hf:nobody/nothing-here")
    with pytest.raises(FileNotFoundError, match="nope"):
        load_encoder("hf:o/x@nope", base_dir=tmp_path)
    with pytest.raises(ValueError, match="no CLS token"):
        load_encoder(f"hf:o/x@{hub / 'ijepa'}", "cls")
    with pytest.raises(ValueError, match=r"blocks\.0 \.\.\. blocks\.1"):
        load_encoder(f"hf:o/x@{hub / 'ijepa'}", "blocks.2")


def _bad_copy(hub, tmp_path, name, edit):
    d = tmp_path / name
    shutil.copytree(hub / "dinov2", d)
    edit(d)
    return d


def _json_edit(**changes):
    def edit(d):
        cfg = json.loads((d / "config.json").read_text())
        (d / "config.json").write_text(json.dumps({**cfg, **changes}))
    return edit


def _cut(d):
    blob = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(blob[: len(blob) // 2])


HF_BAD = {  # directory edit -> what the one line must say (besides naming the directory or the file)
    "wider-config": (_json_edit(hidden_size=48, intermediate_size=96), r"tensors do not fit Dinov2Model .* in the file "
                     r"vs \(1, 1, 48\).*config\.json and the weights"),  # was "look at the above report"
    "unknown-type": (_json_edit(model_type="nonsense_model"), r"model_type 'nonsense_model' is not one rcdm reads"),
    "truncated": (_cut, r"model\.safetensors: a safetensors file that cannot be read .*truncated"),
    "empty": (lambda d: (d / "model.safetensors").write_bytes(b""), r"model\.safetensors: the file is empty"),
    "garbage": (lambda d: (d / "model.safetensors").write_bytes(bytes(range(256)) * 8), r"model\.safetensors: neither"),
    "no-processor": (lambda d: (d / "preprocessor_config.json").unlink(), r"preprocessor_config\.json does not exist"),
    "bad-json": (lambda d: (d / "config.json").write_text("{not json"), r"config\.json is not valid JSON"),
}


@pytest.mark.parametrize("case", sorted(HF_BAD))
def test_hf_bad_directories_are_one_line_errors(case, hub, tmp_path):
    edit, why = HF_BAD[case]
    d = _bad_copy(hub, tmp_path, case, edit)
    with pytest.raises((ValueError, OSError)) as info:
        load_encoder(f"hf:o/x@{d}")
    msg = str(info.value)
    assert re.search(why, msg) and str(d) in msg and len(msg.splitlines()) == 1 and len(msg) < 400, msg


def _hub_cache(tmp_path, hub, repo):
    """The HF cache's layout (models--ORG--NAME/refs/main + snapshots/COMMIT/) holding a save_pretrained directory."""
    commit, root = "0" * 40, tmp_path / "hf-cache" / f"models--{repo.replace('/', '--')}"
    shutil.copytree(hub / "dinov2", root / "snapshots" / commit)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)
    return tmp_path / "hf-cache"


def test_hf_hub_names_offline_read_the_cache_or_fail_at_once(hub, tmp_path, monkeypatch):
    """Offline, a hub name not in the HF cache is one line in seconds (was 23-47 s of retries without
    HF_HUB_OFFLINE); a cached one is read from the cache alone."""
    import time

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(_hub_cache(tmp_path, hub, "org/dino-tiny")))
    t0 = time.time()
    with pytest.raises(OSError, match=r"^hf:org/absent: org/absent is not in the Hugging Face cache .*HF_HUB_OFFLINE "
                                      r"is set.*`hf download org/absent`.*@DIR"):
        load_encoder("hf:org/absent")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr("rcdm.encoders.online.reachable", lambda url, timeout=3.0: False)  # no network, no env var
    with pytest.raises(OSError, match=r"org/absent is not in the Hugging Face cache .*huggingface\.co cannot be "
                                      r"reached"):
        load_encoder("hf:org/absent")
    cached = load_encoder("hf:org/dino-tiny")
    assert constants.HF_HUB_OFFLINE is False and time.time() - t0 < 10
    assert cached.fingerprint() == load_encoder(f"hf:org/dino-tiny@{hub / 'dinov2'}").fingerprint()


def test_missing_extras_name_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ImportError, match=r"pip install 'rcdm\[hf\]'"):
        load_encoder("hf:facebook/dinov2-small")
    with pytest.raises(ImportError, match=r"pip install 'rcdm\[timm\]'"):
        load_encoder("timm:vit_small_patch16_224.dino")


# ---------------------------------------------------------------- timm tags and ViT read-outs

def _timm_state(name):
    return _noisy(timm.create_model(name, pretrained=False).state_dict())


def test_timm_tag_with_local_file(tmp_path):
    state = _timm_state("test_vit")  # the classifier ("head.*") is in the file and dropped
    torch.save(state, tmp_path / "w.pth")
    enc = load_encoder("timm:test_vit.r160_in1k@w.pth", "cls+mean", base_dir=tmp_path)
    cfg = timm.data.resolve_data_config({}, model=enc.net.backbone)
    assert cfg["interpolation"] == "bicubic" and enc.preprocess.interpolation == "bicubic"
    assert enc.preprocess.crop == cfg["input_size"][-1] and enc.preprocess.mean == tuple(cfg["mean"])
    assert all(torch.equal(v, state[k]) for k, v in enc.net.backbone.state_dict().items())
    ref = timm.create_model("test_vit", pretrained=False, num_classes=0)
    ref.load_state_dict({k: v for k, v in state.items() if not k.startswith("head.")})
    x = torch.rand(2, 3, 160, 160)
    with torch.no_grad():
        tokens = ref.eval().forward_features(_norm(x, enc.preprocess))
    torch.testing.assert_close(enc(x), torch.cat([tokens[:, 0], tokens[:, 1:].mean(1)], 1), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="Invalid pretrained tag"):
        load_encoder("timm:test_vit.nope@w.pth", base_dir=tmp_path)


def _norm(x, pre):
    return (x - torch.tensor(pre.mean).view(1, 3, 1, 1)) / torch.tensor(pre.std).view(1, 3, 1, 1)


def test_timm_tag_without_file_reads_the_hf_cache_only(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # an empty cache: offline, nothing to read
    with pytest.raises(OSError, match=r"timm:test_vit\.r160_in1k.*timm:test_vit\.r160_in1k@PATH"):
        load_encoder("timm:test_vit.r160_in1k")


def test_vit_block_readouts_have_the_documented_dimensions():
    enc = load_encoder("timm:test_vit")  # 6 blocks of width 64
    depth, width = len(enc.net.backbone.blocks), enc.net.backbone.embed_dim
    pre = enc.preprocess
    x = torch.rand(1, 3, 160, 160)
    every_block = FrozenEncoder(enc.net, enc.spec, "+".join(f"blocks.{n}" for n in range(depth)), pre)
    tokens = []
    hooks = [b.register_forward_hook(lambda m, i, o: tokens.append(o)) for b in enc.net.backbone.blocks]
    out = every_block(x)
    for h in hooks:
        h.remove()
    assert out.shape == (1, depth * width)
    torch.testing.assert_close(out, torch.cat([t[:, 0] for t in tokens], 1))
    for layer, dim in [("cls", width), ("mean", width), ("cls+mean", 2 * width), ("blocks.0", width)]:
        assert FrozenEncoder(enc.net, enc.spec, layer, pre).dim == dim
    with pytest.raises(ValueError, match=rf"blocks\.0 \.\.\. blocks\.{depth - 1}"):
        FrozenEncoder(enc.net, enc.spec, f"blocks.{depth}", pre)
    assert FrozenEncoder(enc.net, enc.spec, "blocks.0.mlp", pre).dim == width  # plain module names still work


# ---------------------------------------------------------------- Preprocess.interpolation

def test_preprocess_interpolation_round_trip_and_use():
    pre = Preprocess(40, 32, MEAN, STD, interpolation="bicubic")
    assert Preprocess.from_dict(pre.to_dict()) == pre
    old = {k: v for k, v in IMAGENET_PREPROCESS.to_dict().items() if k != "interpolation"}  # an older config
    assert Preprocess.from_dict(old) == IMAGENET_PREPROCESS and IMAGENET_PREPROCESS.interpolation == "bilinear"
    x = torch.rand(1, 3, 50, 60)
    torch.testing.assert_close(pre.view(x), resize_center_crop(x, 40, 32, "bicubic"))
    assert not torch.allclose(pre.view(x), replace(pre, interpolation="bilinear").view(x))
    with pytest.raises(ValueError, match="interpolation 'lanczos'"):
        Preprocess(40, 32, MEAN, STD, interpolation="lanczos")
    for name in ("dino_resnet50", "dino_vits16"):  # DINO's eval: Resize(256, bicubic), CenterCrop(224)
        assert RELEASES[name].preprocess == replace(IMAGENET_PREPROCESS, interpolation="bicubic")


# ---------------------------------------------------------------- checkpoint formats of SSL codebases

def _pre(prefix, state):
    return {prefix + k: v for k, v in state.items()}


def _cifar_resnet18():
    """solo-learn's CIFAR backbone (its base.py): 3x3/stride 1/padding 2 conv1, no max-pool, fc = Identity."""
    m = torchvision.models.resnet18()
    m.conv1, m.maxpool, m.fc = nn.Conv2d(3, 64, 3, 1, 2, bias=False), nn.Identity(), nn.Identity()
    return m


def _fake_solo_learn():
    """A solo-learn BYOL-style Lightning checkpoint: online backbone + projector, and everything else it saves."""
    torch.manual_seed(0)
    net, head = _cifar_resnet18(), nn.Sequential(nn.Linear(512, 64), nn.BatchNorm1d(64), nn.ReLU(),
                                                 nn.Linear(64, 16))
    net.load_state_dict(_noisy(net.state_dict()))
    head.load_state_dict(_noisy(head.state_dict()))
    state = _pre("backbone.", net.state_dict()) | _pre("projector.", head.state_dict())
    state |= _pre("momentum_backbone.", net.state_dict()) | _pre("momentum_projector.", head.state_dict())
    state |= _pre("classifier.", nn.Linear(512, 10).state_dict()) | _pre("predictor.", nn.Linear(16, 16).state_dict())
    state |= _pre("momentum_classifier.", nn.Linear(512, 10).state_dict()) | {"queue": torch.zeros(2, 16, 8)}
    ckpt = {"epoch": 9, "global_step": 900, "pytorch-lightning_version": "2.2.0", "state_dict": state,
            "loops": {}, "callbacks": {}, "optimizer_states": [], "lr_schedulers": []}
    return ckpt, state, net.eval(), head.eval(), "backbone.layer1.0.conv1.weight"


def _fake_lightly():
    """A lightly recipe: backbone = nn.Sequential(*list(resnet18().children())[:-1]), BYOLProjectionHead
    (its ProjectionHead keeps Linear(bias=False), BatchNorm1d, ReLU, Linear in `layers`), momentum copies."""
    torch.manual_seed(1)
    resnet = torchvision.models.resnet18()
    resnet.load_state_dict(_noisy(resnet.state_dict()))
    seq = nn.Sequential(*list(resnet.children())[:-1])
    head = nn.Sequential(nn.Linear(512, 64, bias=False), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 16))
    head.load_state_dict(_noisy(head.state_dict()))
    state = _pre("backbone.", seq.state_dict()) | _pre("projection_head.layers.", head.state_dict())
    state |= _pre("backbone_momentum.", seq.state_dict()) | _pre("projection_head_momentum.layers.", head.state_dict())
    state |= _pre("prediction_head.layers.", nn.Sequential(nn.Linear(16, 8)).state_dict())
    resnet.fc = nn.Identity()
    return {"state_dict": state, "epoch": 3}, state, resnet.eval(), head.eval(), "backbone.4.0.conv1.weight"


@pytest.mark.slow
@pytest.mark.parametrize("fake", [_fake_solo_learn, _fake_lightly], ids=["solo-learn", "lightly"])
def test_resnet_codebase_checkpoints_load_strictly_with_their_head(fake, tmp_path):
    ckpt, state, net, head, key = fake()
    torch.save(ckpt, tmp_path / "last.ckpt")
    enc = load_encoder("torchvision:resnet18@last.ckpt", "backbone+projector", base_dir=tmp_path)
    pre = Preprocess(32, 32, MEAN, STD)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        h = net(_norm(x, pre))  # (2, 512)
        want = torch.cat([h, head(h)], 1)  # (2, 512 + 16)
    torch.testing.assert_close(FrozenEncoder(enc.net, enc.spec, enc.layer, pre)(x), want, rtol=0, atol=1e-5)
    state[key.replace("conv1", "conv_1")] = state.pop(key)
    torch.save(ckpt, tmp_path / "bad.ckpt")
    with pytest.raises(ValueError, match=r"missing \['backbone\.layer1\.0\.conv1\.weight'\].*conv_1"):
        load_encoder("torchvision:resnet18@bad.ckpt", base_dir=tmp_path)


def test_mae_official_pretrain_file(tmp_path):
    """mae_pretrain_vit_*.pth = {"model": timm-layout encoder keys}; the visualisation files add the decoder."""
    state = {k: v for k, v in _timm_state("test_vit").items() if not k.startswith("head.")}
    decoder = {"mask_token": torch.zeros(1, 1, 32), "decoder_embed.weight": torch.zeros(32, 64),
               "decoder_pos_embed": torch.zeros(1, 101, 32), "decoder_blocks.0.norm1.weight": torch.ones(32),
               "decoder_norm.weight": torch.ones(32), "decoder_pred.weight": torch.zeros(768, 32)}
    torch.save({"model": state | decoder}, tmp_path / "mae_pretrain_vit_test.pth")
    enc = load_encoder("timm:test_vit@mae_pretrain_vit_test.pth", base_dir=tmp_path)
    assert all(torch.equal(v, state[k]) for k, v in enc.net.backbone.state_dict().items())
    state["blocks.0.attn.q_kv.weight"] = state.pop("blocks.0.attn.qkv.weight")
    torch.save({"model": state}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"mae layout.*missing \['backbone\.blocks\.0\.attn\.qkv\.weight'\]"):
        load_encoder("timm:test_vit@bad.pth", base_dir=tmp_path)


# timm reads a registered model's pretrained configs from its module's `default_cfgs`
default_cfgs = timm.models.generate_default_cfgs({"tiny_vit_gap_ijepa.test": dict(
    input_size=(3, 32, 32), crop_pct=1.0, interpolation="bicubic", mean=MEAN, std=STD, num_classes=0)})


@timm.models.register_model
def tiny_vit_gap_ijepa(pretrained=False, **kwargs):
    """vit_huge_patch14_gap_224 (timm's I-JEPA architecture) shrunk: no CLS token, average pool, no fc_norm."""
    args = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, class_token=False, global_pool="avg",
                fc_norm=False)
    return timm.models.vision_transformer._create_vision_transformer("tiny_vit_gap_ijepa", pretrained, **args,
                                                                     **kwargs)


def _ijepa_file(tmp_path):
    """facebookresearch/ijepa's checkpoint layout: the online `encoder`, the EMA `target_encoder` (both with DDP's
    "module."), the predictor and the training state. The two encoders differ, as they do after training."""
    tiny = timm.create_model("tiny_vit_gap_ijepa", num_classes=0)
    online, target = _noisy(tiny.state_dict(), 1), _noisy(tiny.state_dict(), 2)
    ckpt = {"encoder": _pre("module.", online), "predictor": {"module.predictor_embed.weight": torch.zeros(4, 32)},
            "target_encoder": _pre("module.", target), "opt": {}, "scaler": None, "epoch": 300, "loss": 0.1,
            "batch_size": 128, "world_size": 16, "lr": 1e-3}
    path = tmp_path / "IN1K-vit.h.14-300e.pth.tar"
    torch.save(ckpt, path)
    return ckpt, path, online, target


def test_ijepa_file_reads_as_timm_and_transformers_read_it(tmp_path):
    with torch.device("meta"):  # the real architecture's flags and key names, without 632M parameters
        real = timm.create_model("vit_huge_patch14_gap_224", num_classes=0)
    tiny = timm.create_model("tiny_vit_gap_ijepa", num_classes=0)
    assert (real.has_class_token, real.global_pool, type(real.fc_norm)) == (False, "avg", nn.Identity)
    assert {k for k in real.state_dict() if not k.startswith("blocks.")} == \
        {k for k in tiny.state_dict() if not k.startswith("blocks.")}
    ckpt, path, online, _ = _ijepa_file(tmp_path)
    enc = load_encoder(f"timm:tiny_vit_gap_ijepa.test@{path.name}", "backbone+mean+blocks.1", base_dir=tmp_path)
    tiny.load_state_dict(timm.models.vision_transformer.checkpoint_filter_fn(torch.load(path), tiny))  # timm's reader
    assert all(torch.equal(v, online[k]) for k, v in tiny.state_dict().items())  # ... takes `encoder`
    x = torch.rand(2, 3, 32, 32)
    pre = enc.preprocess
    assert pre == Preprocess(32, 32, MEAN, STD, interpolation="bicubic")  # the tag's pretrained_cfg
    blocks = []
    hook = tiny.blocks[1].register_forward_hook(lambda m, i, o: blocks.append(o))
    with torch.no_grad():
        tokens = tiny.eval().forward_features(_norm(x, pre))  # (2, 16, 32), no CLS
    hook.remove()
    want = torch.cat([tokens.mean(1), tokens.mean(1), blocks[0].mean(1)], 1)  # blocks.N: patch mean without CLS
    torch.testing.assert_close(enc(x), want, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="no CLS token"):
        FrozenEncoder(enc.net, enc.spec, "cls", pre)
    del ckpt["encoder"]["module.norm.weight"]
    torch.save(ckpt, tmp_path / "bad.pth.tar")
    with pytest.raises(ValueError, match=r"ijepa layout.*missing \['backbone\.norm\.weight'\]"):
        load_encoder("timm:tiny_vit_gap_ijepa.test@bad.pth.tar", base_dir=tmp_path)


def test_ijepa_tag_and_file_agree_and_target_encoder_is_explicit(tmp_path, monkeypatch):
    """timm:NAME.TAG (timm's weights) and timm:NAME.TAG@FILE (the same release file) are one network, the file's
    `encoder`; `#target_encoder` picks the EMA target, from the file or from the tag's own file."""
    _, path, online, target = _ijepa_file(tmp_path)
    cfgs = timm.models._registry._model_pretrained_cfgs  # the tag's weights: this file, read by timm's own loader
    monkeypatch.setitem(cfgs, "tiny_vit_gap_ijepa.test", replace(cfgs["tiny_vit_gap_ijepa.test"], file=str(path)))
    specs = {"tag": "timm:tiny_vit_gap_ijepa.test", "file": f"timm:tiny_vit_gap_ijepa.test@{path}",
             "tag#target": "timm:tiny_vit_gap_ijepa.test#target_encoder",
             "file#target": f"timm:tiny_vit_gap_ijepa.test@{path}#target_encoder"}
    encs = {k: load_encoder(spec) for k, spec in specs.items()}
    for k, enc in encs.items():
        want = target if k.endswith("#target") else online
        assert not enc.random_init and all(torch.equal(v, want[n]) for n, v in enc.net.backbone.state_dict().items()), k
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(encs["tag"](x), encs["file"](x), rtol=0, atol=0)
    assert encs["tag"].fingerprint() == encs["file"].fingerprint() != encs["file#target"].fingerprint()
    with pytest.raises(ValueError, match=r"no state dict under 'teacher'; its entries: \['encoder', 'opt'"):
        load_encoder(f"timm:tiny_vit_gap_ijepa.test@{path}#teacher")


# ---------------------------------------------------------------- lightly ViTs and GELU heads

def _vit(arch, seed=0):
    torch.manual_seed(seed)
    vit = timm.create_model(arch, num_classes=0)
    vit.load_state_dict(_noisy(vit.state_dict(), seed))
    return vit.eval()


def _masked_vit(prefix, vit):
    """lightly's MaskedVisionTransformerTIMM(vit): the ViT under "vit." and the mask token it always creates."""
    return _pre(prefix + "vit.", vit.state_dict()) | {prefix + "mask_token": torch.randn(1, 1, vit.embed_dim)}


def _lightly_pool(vit, x):
    """lightly's MaskedVisionTransformerTIMM.forward, restated: timm's tokens (blocks, then norm), then the ViT's
    global pool by hand: the mean of the patch tokens (no fc_norm) or the CLS token."""
    tokens = vit.forward_features(x)  # (B, N, D)
    return tokens[:, vit.num_prefix_tokens:].mean(1) if vit.global_pool == "avg" else tokens[:, 0]


@pytest.mark.parametrize("arch", ["test_vit", "test_vit2"], ids=["cls-pool", "avg-pool"])
def test_lightly_mae_example_vit_loads_as_lightly_runs_it(arch, tmp_path):
    """lightly's MAE example: backbone = MaskedVisionTransformerTIMM (backbone.vit.*, backbone.mask_token), a pixel
    decoder and a prediction head; no projection head. Before: refused ("unexpected backbone.mask_token", read as
    solo-learn)."""
    vit = _vit(arch)
    state = _masked_vit("backbone.", vit) | {"decoder_embed.weight": torch.zeros(16, 64),
                                             "decoder.decoder_blocks.0.norm1.weight": torch.ones(16),
                                             "decoder.mask_token": torch.zeros(1, 1, 16),
                                             "prediction_head.weight": torch.zeros(192, 16)}
    torch.save({"state_dict": state, "epoch": 9}, tmp_path / "mae.ckpt")
    enc = load_encoder(f"timm:{arch}@mae.ckpt", base_dir=tmp_path)
    x = torch.rand(2, 3, 160, 160)
    with torch.no_grad():
        want = _lightly_pool(vit, _norm(x, enc.preprocess))
    torch.testing.assert_close(enc(x), want, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="no projector"):
        load_encoder(f"timm:{arch}@mae.ckpt", "projector", base_dir=tmp_path)


def _gelu_mlp(dims, bn=False, seed=0):
    """DINOProjectionHead's / MSNProjectionHead's `layers`, restated: Linear (no bias before a BatchNorm), [BN], GELU
    between layers, a plain Linear last."""
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        last = i == len(dims) - 2
        layers.append(nn.Linear(a, b, bias=last or not bn))
        layers += [] if last else ([nn.BatchNorm1d(b)] if bn else []) + [nn.GELU()]
    head = nn.Sequential(*layers)
    head.load_state_dict(_noisy(head.state_dict(), seed))
    for m in head:
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.uniform_(-0.1, 0.1), m.running_var.uniform_(0.5, 1.5)
    return head.eval()


def _weight_normed(d_in, d_out):
    return nn.utils.parametrizations.weight_norm(nn.Linear(d_in, d_out, bias=False)).state_dict()


def _lightly_dino(vit):
    """lightly's DINO example with a ViT: student and teacher backbones and DINOProjectionHeads (layers + a
    weight-normed last_layer); the teacher is the evaluated network."""
    head, student = _gelu_mlp([vit.embed_dim, 48, 48, 16]), _gelu_mlp([vit.embed_dim, 48, 48, 16], seed=5)
    state = _masked_vit("teacher_backbone.", vit) | _masked_vit("student_backbone.", _vit("test_vit", seed=5))
    state |= _pre("teacher_head.layers.", head.state_dict()) | _pre("teacher_head.last_layer.", _weight_normed(16, 64))
    state |= _pre("student_head.layers.", student.state_dict())
    state |= _pre("student_head.last_layer.", _weight_normed(16, 64))
    return state, head


def _lightly_msn(vit):
    """lightly's MSN example: backbone + MSNProjectionHead (Linear-BN-GELU twice, Linear), their anchor copies and
    the prototypes."""
    head = _gelu_mlp([vit.embed_dim, 48, 48, 16], bn=True)
    state = _masked_vit("backbone.", vit) | _pre("projection_head.layers.", head.state_dict())
    state |= _masked_vit("anchor_backbone.", vit) | _pre("anchor_projection_head.layers.", head.state_dict())
    return state | {"prototypes": torch.randn(32, 16)}, head


@pytest.mark.parametrize("fake", [_lightly_dino, _lightly_msn], ids=["dino", "msn"])
def test_lightly_gelu_heads_are_built_exactly(fake, tmp_path):
    """Before: both read as ReLU heads, the projector off by up to 0.12 (|out| ~0.23) in the independent check."""
    vit = _vit("test_vit")
    state, head = fake(vit)
    torch.save({"state_dict": state}, tmp_path / "last.ckpt")
    enc = load_encoder("timm:test_vit@last.ckpt", "backbone+projector", base_dir=tmp_path)
    assert [type(m) for m in enc.net.projector] == [type(m) for m in head]
    x = torch.rand(2, 3, 160, 160)
    with torch.no_grad():
        h = _lightly_pool(vit, _norm(x, enc.preprocess))
        want = torch.cat([h, head(h)], 1)
    torch.testing.assert_close(enc(x), want, rtol=0, atol=1e-5)


def _cifar_solo_learn(projector):
    torch.manual_seed(0)
    net = _cifar_resnet18()
    net.load_state_dict(_noisy(net.state_dict()))
    state = _pre("backbone.", net.state_dict()) | _pre("projector.", projector.state_dict())
    state |= _pre("classifier.", nn.Linear(512, 10).state_dict())
    return {"state_dict": state, "epoch": 9}, net.eval()


@pytest.mark.parametrize("method, activation", [("vibcreg", nn.GELU), ("vicreg", nn.ReLU), (None, None)])
def test_solo_learn_head_activation_comes_from_args_json(method, activation, tmp_path):
    """solo-learn's VIbCReg projector (Linear-BN-GELU twice, Linear) has VICReg's layout (ReLU): its args.json,
    written beside the checkpoint, names the method; without it the projector is refused, the backbone still loads."""
    head = _gelu_mlp([512, 32, 32, 16], bn=True)
    for i, m in enumerate(head):  # solo-learn keeps the Linear biases before its BatchNorms
        if isinstance(m, nn.Linear) and m.bias is None:
            head[i] = nn.Linear(m.in_features, m.out_features)
    if activation is not None:
        head = nn.Sequential(*[activation() if isinstance(m, nn.GELU) else m for m in head]).eval()
    ckpt, net = _cifar_solo_learn(head)
    torch.save(ckpt, tmp_path / "byol-ep=9.ckpt")
    if method is not None:
        (tmp_path / "args.json").write_text(json.dumps({"method": method, "data": {"dataset": "cifar10"}}))
        enc = load_encoder("torchvision:resnet18@byol-ep=9.ckpt", "projector", base_dir=tmp_path)
        x = torch.rand(2, 3, 32, 32)
        with torch.no_grad():
            want = head(net(_norm(x, enc.preprocess)))
        torch.testing.assert_close(enc(x), want, rtol=0, atol=1e-5)
        return
    with pytest.raises(ValueError, match="VIbCReg.*args.json"):
        load_encoder("torchvision:resnet18@byol-ep=9.ckpt", "projector", base_dir=tmp_path)
    assert load_encoder("torchvision:resnet18@byol-ep=9.ckpt", base_dir=tmp_path).dim == 512


def test_solo_learn_dino_head_is_its_gelu_mlp(tmp_path):
    """solo-learn's DINO keeps DINOHead as `head` (mlp: Linear-GELU-Linear-GELU-Linear, and the weight-normed
    last_layer), not as `projector`; the projector is the MLP's bottleneck, as for DINO's own releases."""
    mlp = _gelu_mlp([512, 32, 32, 16])
    ckpt, net = _cifar_solo_learn(nn.Sequential())
    state = ckpt["state_dict"]
    state |= _pre("head.mlp.", mlp.state_dict()) | _pre("head.last_layer.", _weight_normed(16, 64))
    state |= _pre("momentum_backbone.", net.state_dict()) | _pre("momentum_head.mlp.", mlp.state_dict())
    torch.save(ckpt, tmp_path / "dino.ckpt")
    enc = load_encoder("torchvision:resnet18@dino.ckpt", "projector", base_dir=tmp_path)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        want = mlp(net(_norm(x, enc.preprocess)))
    torch.testing.assert_close(enc(x), want, rtol=0, atol=1e-5)


def test_heads_of_other_modules_are_refused_not_guessed(tmp_path):
    head = nn.Sequential(nn.Linear(512, 32), nn.LayerNorm(32), nn.ReLU(), nn.Linear(32, 16))  # VICRegL's local head
    ckpt, _ = _cifar_solo_learn(head)
    torch.save(ckpt, tmp_path / "last.ckpt")
    with pytest.raises(ValueError, match=r"slot 1 holds \['bias', 'weight'\], neither a Linear nor a BatchNorm1d"):
        load_encoder("torchvision:resnet18@last.ckpt", "projector", base_dir=tmp_path)


def test_head_layouts_are_read_from_keys():
    from rcdm.encoders.formats import head_from_state

    head = nn.Sequential(nn.Linear(8, 16, bias=False), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4, bias=False),
                         nn.BatchNorm1d(4, affine=False))
    built = head_from_state(head.state_dict(), "spec")
    assert [type(m) for m in built] == [type(m) for m in head]
    assert built[0].bias is None and built[4].weight is None and built[3].bias is None
    with pytest.raises(ValueError, match="not an nn.Sequential"):
        head_from_state({"mlp.0.weight": torch.zeros(2, 2)}, "spec")


def test_solo_learn_cifar_checkpoints_get_solo_learns_cifar_preprocessing(tmp_path):
    """solo-learn evaluates its CIFAR models on 32 px images normalised with its CIFAR statistics
    (classification_dataloader.prepare_transforms), not with ImageNet's 256/224 and statistics: the stem says CIFAR,
    or args.json names the data set. A photo is first brought to 32 px (short side, centre crop)."""
    import torchvision.transforms as TV

    ckpt, _, net, head, _ = _fake_solo_learn()
    torch.save(ckpt, tmp_path / "last.ckpt")
    enc = load_encoder("torchvision:resnet18@last.ckpt", "backbone+projector", base_dir=tmp_path)
    cifar_eval = TV.Compose([TV.ToTensor(), TV.Normalize((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261))])
    photos = [_photo((30, 100, 481, 400)), _photo()]
    x = torch.stack([cifar_eval(TV.CenterCrop(32)(TV.Resize(32)(p))) for p in photos])  # (2, 3, 32, 32)
    with torch.no_grad():
        h = net(x)
        want = torch.cat([h, head(h)], 1)
    got = enc.encode(photos)
    assert enc.preprocess == Preprocess(32, 32, (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261))
    assert (got - want).abs().max() < 1e-3 * want.abs().max()  # PIL resize vs torch: measured 4.6e-5 (was 1.28)
    (tmp_path / "args.json").write_text(json.dumps({"method": "byol", "data": {"dataset": "stl10"}}))
    assert load_encoder("torchvision:resnet18@last.ckpt", base_dir=tmp_path).preprocess == \
        Preprocess(96, 96, (0.4914, 0.4823, 0.4466), (0.247, 0.243, 0.261), fit="squash")


def test_reachable_probes_one_tcp_connect(monkeypatch):
    import socket
    import time

    from rcdm.encoders.online import reachable

    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        assert reachable(f"http://127.0.0.1:{port}/x")
    t0 = time.time()
    assert not reachable(f"http://127.0.0.1:{port}/x", timeout=1.0)  # closed: refused at once
    assert time.time() - t0 < 1.6
