"""`rcdm sample`: a grid of samples that share each input image's representation (or a prior's draws)."""
from __future__ import annotations

from .flags import add_model_flag, add_sampling_flags, sampling_from_args


def add_parser(sub) -> None:
    p = sub.add_parser("sample", help="sample images from the embeddings of input images",
                       description="Sample images that share an input's representation. Writes a grid: one row "
                                   "per input, the input first, then its samples.")
    p.add_argument("--image", nargs="+", default=None, metavar="IMG", help="input image file(s)")
    p.add_argument("--unconditional", type=int, default=0, metavar="N",
                   help="draw N embeddings from the model's prior p(h) (`rcdm train-prior`) and one image from each; "
                        "with --image, embeddings near the first image's (see --strength) (default: 0, off)")
    p.add_argument("--strength", type=float, default=1.0,
                   help="with --unconditional and --image: how far to noise the image's embedding before the prior "
                        "denoises it back; 1 = unrelated to the image, 0 = the image's own (default: 1.0)")
    add_model_flag(p)
    add_sampling_flags(p, num_samples=4)
    p.add_argument("--upscale", type=int, default=2, help="nearest-neighbour upscale of the grid (default: 2)")
    p.add_argument("--out", default="grid.png", help="output PNG (default: grid.png)")
    p.set_defaults(func=run)


def run(args) -> None:
    import dataclasses

    from tqdm.auto import tqdm

    from ..data import open_image
    from ..flags import load_pipeline
    from ..images import to_pil
    from ..sampling import prior_generator, sample
    from ..viz import image_grid, sample_rows

    if not args.image and not args.unconditional:
        raise ValueError("give --image IMG... (samples from their embeddings) or --unconditional N (a prior's)")
    inputs = [open_image(p) for p in args.image or []]  # fail on a bad file before loading any model
    spec = sampling_from_args(args)
    pipe = load_pipeline(args.model, args.device, args.dtype)
    spec = spec.resolve(pipe)
    if args.unconditional:  # h ~ p(h) (near the first --image with --strength < 1), then one image per h
        h = pipe.sample_embeddings(args.unconditional, prior_generator(spec.seed), near=inputs[:1] or None,
                                   strength=args.strength)
        spec, inputs = dataclasses.replace(spec, num_samples=1), []
    else:
        h = pipe.encode(inputs)
    with tqdm(total=1, desc="sampling", unit="step") as bar:
        def progress(step, total):
            bar.total = total
            bar.update(step - bar.n)

        x = sample(pipe, h, run=spec, callback=progress)  # = pipe(embeddings=h, num_samples=K, seed=seed, ...)
    pils = to_pil(x)
    rows = sample_rows(inputs, pils, spec.num_samples) if inputs else \
        [pils[i:i + 8] for i in range(0, len(pils), 8)]  # unconditional: rows of 8
    image_grid(rows, upscale=args.upscale).save(args.out)
    what = f"{len(inputs)} row(s) of input + {spec.num_samples} samples" if inputs else \
        f"{len(pils)} samples from the prior's embeddings"
    print(f"wrote {args.out}: {what} ({spec.describe()})")
