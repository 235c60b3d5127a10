"""`rcdm analyze <kind>`: each kind runs one analysis of rcdm.analysis and writes a PNG figure and a JSON file of
numbers. Heavy imports (the pipeline, diffusers) stay inside the commands so `rcdm --help` stays instant."""
from __future__ import annotations

from pathlib import Path

from ..choices import AUGMENTATIONS, MEMORIZATION_BACKGROUNDS, MEMORIZATION_MODES
from ..flags import load_pipeline
from .flags import add_model_flag, add_sampling_flags, sampling_from_args


# ------------------------------------------------------------------------------------------------ shared flags
def _model_flag(p, many: str | None = None) -> None:
    """One model (default: the shipped default), or several: `many` = "default" or "shipped" says which default."""
    if many is None:
        add_model_flag(p)
    else:
        which = "every shipped model, the default first" if many == "shipped" else "the shipped default model"
        add_model_flag(p, many=True, default_help=f"(default: {which})")
    p.set_defaults(model_default=many)


def _image_flags(p, num_images: int) -> None:
    p.add_argument("--image", nargs="+", default=None, metavar="IMG", help="input image file(s)")
    p.add_argument("--data", default=None,
                   help="or take the first --num-images readable items of a data spec: file.npz[:split] (a bare "
                        ".npz means its test split), an image folder, or torchvision:NAME:ROOT[:split]")
    p.add_argument("--num-images", type=int, default=num_images,
                   help=f"images to take from --data (default: {num_images})")


def _output_flags(p, kind: str) -> None:
    p.add_argument("--out", default=f"{kind}.png", help=f"output PNG figure (default: {kind}.png)")
    p.add_argument("--json", default=None, help="output JSON of numbers (default: --out with a .json suffix)")


# ------------------------------------------------------------------------------------------------ helpers
def _run(args):
    return sampling_from_args(args)


def _pipe(name, args):
    return load_pipeline(name, args.device, args.dtype)


def _pipes(args) -> dict:
    """NAME=PATH or PATH (named by its directory) -> {name: pipe}, in the order given; without --model, the
    shipped default (or every shipped model, for the kinds that compare models)."""
    from ..pipeline import DEFAULT_MODEL, shipped_models

    specs = args.model or ([d.name for d in shipped_models()] if args.model_default == "shipped" else [DEFAULT_MODEL])
    out = {}
    for spec in specs:
        name, _, path = spec.partition("=") if "=" in spec else (Path(spec.rstrip("/")).name, "", spec)
        if name in out:
            raise ValueError(f"two models are named {name!r}; name them with NAME=PATH")
        out[name] = _pipe(path, args)
    return out


def _images(args, minimum: int = 1, split: str = "test"):
    """PIL images from --image, or uint8 tensors from --data; fails before any model is loaded."""
    from ..analysis.common import read_images
    from ..data import open_image

    if (args.image is None) == (args.data is None):
        raise ValueError("give exactly one of --image or --data")
    images = [open_image(p) for p in args.image] if args.image else read_images(args.data, args.num_images, split)[0]
    if len(images) < minimum:
        raise ValueError(f"this analysis needs at least {minimum} images, got {len(images)}")
    return images


def check_outputs(args) -> None:
    """Refuse, before any work, a --out the figure cannot be written to (a directory, a missing directory, a suffix
    matplotlib or PIL cannot write) and a --json that is a directory: one line that names the flag and the fix,
    instead of the writer's error after all the sampling."""
    png, example = Path(args.out), f"{args.kind}.png"
    if png.is_dir():
        raise ValueError(f"--out {args.out} is a directory; give the figure's file name, e.g. --out {png / example}")
    if not png.parent.is_dir():
        raise ValueError(f"--out {args.out}: the directory {png.parent} does not exist; create it, or give another "
                         f"path such as --out {example}")
    suffix, formats = png.suffix.lower().lstrip("."), figure_formats()
    if suffix not in formats:
        what = f"'.{suffix}' files" if suffix else "a name without a suffix"
        raise ValueError(f"--out {args.out}: cannot write a figure to {what}; give a name ending in .png (or "
                         f"{', '.join('.' + f for f in formats if f != 'png')}), e.g. --out {png.with_name(example)}")
    js = Path(args.json) if args.json else png.with_suffix(".json")
    if js.is_dir():
        raise ValueError(f"--json {js} is a directory; give the numbers' file name, e.g. --json "
                         f"{js / (args.kind + '.json')}")


def figure_formats() -> list[str]:
    """Suffixes both figure writers can save: matplotlib (most kinds) and PIL (image-only figures)."""
    from matplotlib.figure import Figure
    from PIL import Image

    Image.init()
    pil = {ext.lstrip(".") for ext, fmt in Image.registered_extensions().items() if fmt in Image.SAVE}
    return sorted(set(Figure().canvas.get_supported_filetypes()) & pil)


def _finish(result, args) -> None:
    result.numbers["cli"] = {k: v for k, v in vars(args).items() if k != "func"}
    png, js = result.save(args.out, args.json)
    print(f"wrote {png} and {js}")


# ------------------------------------------------------------------------------------------------ commands
def cmd_spread(args) -> None:
    from ..analysis.spread import spread

    images = _images(args)
    res = spread(_pipe(args.model, args), images, _run(args))
    _finish(res, args)
    print(f"mean pixel std {res.numbers['mean_pixel_std']:.4f}")


def cmd_compare(args) -> None:
    from ..analysis.models import compare

    images = _images(args, minimum=2)
    _finish(compare(_pipes(args), images, _run(args)), args)


def cmd_layers(args) -> None:
    from ..analysis.models import layers

    images = _images(args, minimum=2)
    res = layers(_pipes(args), images, _run(args))
    _finish(res, args)
    print("| layer | dim | mean rank | top-1 % | pixel diversity | feature diversity |\n|---|---|---|---|---|---|")
    for r in res.numbers["table"]:
        print(f"| {r['layer']} | {r['dim']} | {r['mean_rank']:.2f} | {r['top1_pct']:.1f} | {_f(r['pixel_rms'])} | "
              f"{_f(r['feature_cosine'])} |")


def _f(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def cmd_interpolate(args) -> None:
    from ..analysis.interpolate import interpolate
    from ..data import open_image

    a, b = open_image(args.image[0]), open_image(args.image[1])
    _finish(interpolate(_pipe(args.model, args), a, b, args.points, args.modes, _run(args)), args)


def cmd_manipulate(args) -> None:
    from ..analysis.manipulate import manipulate
    from ..data import open_image

    src, tgt = open_image(args.source), open_image(args.target)
    res = manipulate(_pipe(args.model, args), src, tgt, args.bank, args.k, args.eps, args.min_frac, _run(args))
    _finish(res, args)
    print(f"{res.numbers['num_common']} of {res.numbers['dim']} dims common to the {args.k} neighbours")


def cmd_invariance(args) -> None:
    from ..analysis.invariance import AugmentParams, invariance

    images = _images(args)
    params = AugmentParams(args.crop_frac, args.hue_turns, args.rotation_deg, args.blur_sigma)
    res = invariance(_pipes(args), images, args.augmentations, params, _run(args))
    _finish(res, args)
    for model, r in res.numbers["models"].items():
        print(model + ": " + ", ".join(f"{a} {_f(s)}" for a, s in r["scores"].items()))


def cmd_adversarial(args) -> None:
    from ..analysis.adversarial import adversarial
    from ..data import open_image

    src, tgt = open_image(args.source), open_image(args.target)
    refs = None
    if args.references:
        from ..analysis.common import read_images

        refs = read_images(args.references, args.num_references, "test")[0]
    res = adversarial(_pipe(args.model, args), src, tgt, args.eps / 255, args.pgd_steps, args.step_size / 255, refs,
                      _run(args))
    _finish(res, args)
    n = res.numbers
    print(f"cos(f(x), f(target)) {n['cos_to_target_before']:.3f} -> {n['cos_to_target_after']:.3f}")


def cmd_memorization(args) -> None:
    from ..analysis.common import read_images
    from ..analysis.memorization import memorization

    train_x, train_y = read_images(args.train_data, args.num_images, "train")
    test_x, test_y = read_images(args.test_data, args.num_images, "test")
    res = memorization(_pipe(args.model, args), train_x, train_y, test_x, test_y, args.bank, args.k_neighbours,
                       args.background, args.box_frac, args.modes, args.knn_k, _run(args))
    _finish(res, args)
    n = res.numbers
    for key in ["patch_knn_accuracy"] + list(args.modes):
        print(f"{key}: train {n['train'][key]:.3f}, test {n['test'][key]:.3f} (chance {n['chance']:.3f})")


def run(args) -> None:
    check_outputs(args)  # before any image is read or model loaded
    KINDS[args.kind](args)


KINDS = {"spread": cmd_spread, "compare": cmd_compare, "interpolate": cmd_interpolate, "manipulate": cmd_manipulate,
         "invariance": cmd_invariance, "adversarial": cmd_adversarial, "memorization": cmd_memorization,
         "layers": cmd_layers}


# ------------------------------------------------------------------------------------------------ parsers
def _kind(sub, name: str, help: str, description: str, num_samples: int, many: str | None = None,
          images: int | None = None):
    p = sub.add_parser(name, help=help, description=description)
    _model_flag(p, many)
    if images is not None:
        _image_flags(p, images)
    add_sampling_flags(p, num_samples)
    _output_flags(p, name)
    p.set_defaults(func=run)
    return p


def add_parser(sub) -> None:
    top = sub.add_parser("analyze", help="analyses of what a representation keeps: spread, compare, interpolate, "
                                         "manipulate, invariance, adversarial, memorization, layers",
                         description="Each kind samples from one or more RCDMs with seeded per-sample noise and "
                                     "writes a PNG figure (--out) and a JSON file of numbers (--json). "
                                     "`rcdm analyze KIND --help` lists its flags; the definitions of the numbers "
                                     "are in the docstrings of rcdm.analysis.<module>.")
    kinds = top.add_subparsers(dest="kind", metavar="KIND", required=True)
    _kind(kinds, "spread", "samples per image and their per-pixel std map",
          "K samples per image beside a heat map of the per-pixel standard deviation among them.", 8, images=4)
    _kind(kinds, "compare", "two or more models side by side, with rank and diversity",
          "The same images and noise through several models; rank among the images in each model's own encoder "
          "space, and diversity.", 4, many="shipped", images=4)
    p = _kind(kinds, "interpolate", "lerp and slerp between two images' embeddings",
              "Samples along the path from f(A) to f(B), t = 0 ... 1 with endpoints, the same noise at every "
              "point.", 1)
    p.add_argument("--image", nargs=2, required=True, metavar=("A", "B"), help="the two endpoint images")
    p.add_argument("--points", type=int, default=8, help="points on the path, endpoints included (default: 8)")
    p.add_argument("--modes", nargs="+", default=["lerp", "slerp"], choices=["lerp", "slerp"],
                   help="paths to draw, one row each (default: lerp slerp)")
    p = _kind(kinds, "manipulate", "zero or transplant the dims shared by nearest neighbours",
              "Dims non-zero in most of the source's k nearest neighbours in a bank are zeroed, or transplanted "
              "from a target image.", 4)
    p.add_argument("--source", required=True, help="the image to manipulate")
    p.add_argument("--target", required=True, help="the image whose values are transplanted into the common dims")
    p.add_argument("--bank", required=True,
                   help="embedding bank: an `rcdm embed` cache of the model's encoder and layer (view 0), or a data "
                        "spec whose train split is embedded")
    p.add_argument("--k", type=int, default=10, help="nearest neighbours of the source in the bank (default: 10)")
    p.add_argument("--eps", type=float, default=1e-6, help="|h| above this counts as non-zero (default: 1e-6)")
    p.add_argument("--min-frac", type=float, default=0.5,
                   help="a dim is common if non-zero in more than this fraction of the neighbours (default: 0.5)")
    p = _kind(kinds, "invariance", "condition on f(t(x)): scores 1 = t kept, 0 = discarded",
              "Scores per augmentation and model; the statistics are defined in rcdm.analysis.invariance.", 4,
              many="default", images=8)
    p.add_argument("--augmentations", nargs="+", default=list(AUGMENTATIONS), choices=list(AUGMENTATIONS),
                   help=f"augmentations to test (default: all: {' '.join(AUGMENTATIONS)})")
    p.add_argument("--crop-frac", type=float, default=0.5, help="centre crop side / image side (default: 0.5)")
    p.add_argument("--hue-turns", type=float, default=0.25, help="hue rotation in turns of the circle (default: 0.25)")
    p.add_argument("--rotation-deg", type=float, default=90.0, help="rotation angle in degrees (default: 90)")
    p.add_argument("--blur-sigma", type=float, default=0.04,
                   help="Gaussian blur sigma as a fraction of the image side (default: 0.04)")
    p = _kind(kinds, "adversarial", "PGD towards a target embedding, then sample",
              "L-inf PGD on the encoder input moves f(source) towards f(target); samples from f(x_adv) show what "
              "the representation now sees, beside samples from f(source) and f(target) with the same noise.", 4)
    p.add_argument("--source", required=True, help="the image to perturb")
    p.add_argument("--target", required=True, help="the image whose embedding the perturbation aims at")
    p.add_argument("--eps", type=float, default=8.0, help="L-inf radius in pixel levels out of 255 (default: 8)")
    p.add_argument("--pgd-steps", type=int, default=10, help="PGD steps (default: 10)")
    p.add_argument("--step-size", type=float, default=2.0, help="PGD step in pixel levels out of 255 (default: 2)")
    p.add_argument("--references", default=None,
                   help="data spec of extra reference images for the ranks of source and target (default: none, "
                        "ranks among the two alone)")
    p.add_argument("--num-references", type=int, default=98, help="extra references from --references (default: 98)")
    p = _kind(kinds, "memorization", "Déjà vu: does the foreground come back from the background?",
              "Condition on the embedding of a background-only crop (or the mean of its nearest neighbours in a "
              "labelled bank) and count how often the samples' kNN class is the hidden one, on train vs "
              "held-out images.", 4)
    p.add_argument("--train-data", required=True, help="data spec of images the model was trained on (train split)")
    p.add_argument("--test-data", required=True, help="data spec of held-out images (test split)")
    p.add_argument("--num-images", type=int, default=100, help="images per split (default: 100)")
    p.add_argument("--bank", required=True,
                   help="labelled embeddings of a public set: an `rcdm embed` cache of the model's encoder and layer, "
                        "or a data spec whose train split is embedded")
    p.add_argument("--background", default="frame", choices=list(MEMORIZATION_BACKGROUNDS),
                   help="frame: centre box hidden; corner: top-left corner outside the box; none: images are already "
                        "background crops (default: frame)")
    p.add_argument("--box-frac", type=float, default=0.5,
                   help="side of the hidden centre box / image side (default: 0.5)")
    p.add_argument("--modes", nargs="+", default=list(MEMORIZATION_MODES), choices=list(MEMORIZATION_MODES),
                   help="patch: condition on the crop's embedding; knn: on the mean of its neighbours in the bank "
                        "(default: patch knn)")
    p.add_argument("--k-neighbours", type=int, default=20, help="neighbours averaged in knn mode (default: 20)")
    p.add_argument("--knn-k", type=int, default=20, help="k of the kNN classifier that labels samples (default: 20)")
    _kind(kinds, "layers", "one RCDM per layer of one encoder: rows = layers",
          "Guillotine Regularization: RCDMs trained on successive layers of one encoder, one grid row and one "
          "table row (rank, diversity) per layer. Give --model in layer order.", 2, many="shipped", images=6)
