"""Is this the encoder something was made with? A saved denoiser and an embedding cache both record the encoder's
identity (`FrozenEncoder.config()`: spec, layer, dim, preprocessing, weights fingerprint); these checks compare a
loaded encoder with such a record, in one place for both.

    check_encoder_matches(encoder, meta["encoder"], where)          # spec, layer, dim, then weights
    check_encoder_weights(encoder, meta["encoder"], where)          # the weights fingerprint only
"""
from __future__ import annotations

from pathlib import Path

# What was made with the encoder, and what to do when its weights differ: a pipeline (the default) or a cache
MADE_WITH = {"denoiser": ("this denoiser was trained on", "Restore the weights file the model was trained with, "
                                                          "or retrain."),
             "cache": ("this cache was made with", "The denoiser would condition on another network: restore the "
                                                   "original weights, or re-run `rcdm embed`.")}


def check_encoder_matches(encoder, recorded: dict, where, made: str = "denoiser") -> None:
    """Refuse an encoder other than the recorded one (another spec, layer or width): embeddings from it live in a
    different space, so samples conditioned on them would be meaningless. Then `check_encoder_weights`."""
    got = {"spec": encoder.spec, "layer": encoder.layer, "dim": encoder.dim}
    want = {k: recorded[k] for k in got}
    same = same_spec(got["spec"], want["spec"], recorded.get("fingerprint"))
    if got["dim"] != want["dim"] or got["layer"] != want["layer"] or not same:
        raise ValueError(
            f"{where}: {MADE_WITH[made][0]} encoder {want['spec']!r}, layer {want['layer']!r} "
            f"({want['dim']}-d), but was given {got['spec']!r}, layer {got['layer']!r} ({got['dim']}-d). "
            "Embeddings from another encoder or layer live in a different space; load without `encoder=` "
            "or train a denoiser for that encoder."
        )
    check_encoder_weights(encoder, recorded, where, made)


def check_encoder_weights(encoder, recorded: dict, where, made: str = "denoiser") -> None:
    """Refuse an encoder whose weights differ from the recorded fingerprint (one spec, another network: a random
    init rebuilt, a weights file replaced). Records made before fingerprints existed hold none: not checked."""
    want = recorded.get("fingerprint")
    if not want:
        return
    got = encoder.fingerprint()
    if got != want:
        why = ("It has no stored weights (a random init), so every load draws another network; train on an encoder "
               "with a weights file (torchvision:ARCH@weights.pth)." if encoder.random_init else MADE_WITH[made][1])
        raise ValueError(f"{where}: encoder {encoder.spec!r} has other weights than the ones {MADE_WITH[made][0]} "
                         f"(fingerprint {got[:12]} != recorded {want[:12]}). {why}")


def same_spec(got: str, want: str, fingerprint: str | None) -> bool:
    """Specs name the same encoder: the same name, wherever a local copy of the weights lives (`name@PATH`). Local
    rcdm-native encoders (`file:`, `pretrained:`) move and are renamed when a model carries its own copy
    (`file:encoder`): with a recorded fingerprint, the weights decide (`check_encoder_weights`)."""
    local = ("file:", "pretrained:")
    if fingerprint and got.startswith(local) and want.startswith(local):
        return True
    return spec_key(got) == spec_key(want)


def spec_key(spec: str) -> str:
    """The part of a spec that names the network: a `file:` directory's name, a `pretrained:` name, else the spec
    without its `@PATH` (where a local copy of the weights lives)."""
    if spec.startswith("file:"):
        return Path(spec[5:]).name
    return spec.partition(":")[2] if spec.startswith("pretrained:") else spec.split("@")[0]
