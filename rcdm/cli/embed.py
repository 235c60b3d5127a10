"""`rcdm embed`: the frozen embeddings of a dataset, the training cache (rcdm.cache), sharded over the processes of
an `accelerate launch` and resumed after a kill."""
from __future__ import annotations

import argparse
from dataclasses import fields


def add_parser(sub) -> None:
    p = sub.add_parser("embed", help="precompute frozen embeddings of a dataset (the training cache)",
                       description="Encode every image of a dataset, as is and flipped, with a frozen encoder, and "
                                   "store the embeddings for training. Runs as is or under `accelerate launch` "
                                   "(the processes share the work); a killed run resumes when run again.")
    p.add_argument("--encoder", required=True, help="encoder spec, e.g. file:pretrained/simclr-cifar10-r18w32, "
                                                    "dino_resnet50, torchvision:resnet50@weights.pth")
    p.add_argument("--layer", default="backbone", help="backbone, projector, a module name, or a+b (default: backbone)")
    p.add_argument("--data", required=True, help="data: file.npz[:split], an image folder, WebDataset tar shards (wds:DIR/train-{000000..000146}.tar, a .tar, or a folder of .tar files), or torchvision:NAME:ROOT")
    p.add_argument("--out", required=True, help="output cache file (.safetensors); OUT.partial while it is made")
    p.add_argument("--batch-size", type=int, default=256, help="images per encoder call (default: 256)")
    p.add_argument("--num-workers", type=int, default=None,
                   help="DataLoader workers for decoding, per process; 0 decodes in the main process "
                        "(default: min(8, CPUs per process on this machine))")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16"),
                   help="stored precision of the embeddings; float16 halves the file (default: float32)")
    p.add_argument("--matched-view", action="store_true",
                   help="the encoder sees the full short-side centre crop the denoiser is trained on, resized to "
                        "its input size, as in RCDM's reference, instead of its own resize-then-smaller-crop; "
                        "recorded in the cache and in the trained pipeline (default: off)")
    p.add_argument("--chunk-size", type=int, default=4096,
                   help="images per committed chunk: the most a kill loses per process (default: 4096)")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=False,
                   help="bf16 autocast for the encoder (default: off; fp32 embeddings)")
    p.add_argument("--device", default="auto", help="torch device (default: auto; each process's own GPU under "
                                                    "accelerate launch)")
    p.set_defaults(func=run)


def run(args) -> None:
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    from ..cache import VIEWS, EmbedOptions, build_cache
    from ..encoders import load_encoder

    # as `Accelerator` does, ACCELERATE_USE_CPU makes the processes of a launch a gloo group (PartialState alone
    # would leave each one on its own)
    state = PartialState(cpu=args.device == "cpu" or parse_flag_from_env("ACCELERATE_USE_CPU"))
    device = state.device if args.device == "auto" else args.device
    encoder = load_encoder(args.encoder, args.layer, device=device)
    names = {f.name for f in fields(EmbedOptions)}
    cache = build_cache(encoder, args.data, args.out, **{k: v for k, v in vars(args).items() if k in names})
    if cache is not None:
        m = cache.meta
        print(f"wrote {args.out}: {len(cache.indices)} images x {len(VIEWS)} views x {cache.dim}-d {m['dtype']} "
              f"in {m['seconds']} s ({m['num_bad']} unreadable skipped)")
