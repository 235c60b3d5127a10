"""`rcdm train-prior`: a diffusion prior over representations, h ~ p(h), stored in `<pipeline>/prior/`.

    rcdm train-prior --cache runs/emb-backbone.safetensors --output-dir runs/prior \\
        --model pretrained/rcdm-cifar10-backbone
    rcdm sample --unconditional 16 --out dream.png

The model and its recipe: rcdm.prior (RCG's "RDM", Li, Katabi & He 2023).
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys

from ..prior_config import PriorConfig
from .flags import add_dataclass_args


def add_parser(sub) -> None:
    p = sub.add_parser("train-prior", help="train a diffusion prior p(h) over an embedding cache (RCG's RDM)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_args(p, PriorConfig)
    p.add_argument("--eval-n", type=int, default=2000,
                   help="after training, FD and class histogram of this many sampled embeddings (0 = skip; "
                        "default: 2000)")
    p.set_defaults(func=run)


def run(args) -> None:
    from ..config import dataclass_from_args
    from ..prior import Prior, evaluate_prior
    from ..training.prior import install, train_prior

    cfg = dataclass_from_args(PriorConfig, args)
    if not cfg.cache:
        raise ValueError("--cache is required (make it with `rcdm embed`)")
    out = train_prior(cfg, shlex.join(["rcdm"] + sys.argv[1:]), install_into_model=False)
    print(f"wrote {out}")
    if args.eval_n:  # the evaluation goes into prior_info.json before the prior is installed anywhere
        res = evaluate_prior(Prior.from_pretrained(out), cfg.cache, args.eval_n, cfg.seed)
        info_path = out / "prior_info.json"
        info_path.write_text(json.dumps({**json.loads(info_path.read_text()), "evaluation": res}, indent=2))
        print(json.dumps({k: v for k, v in res.items() if not k.startswith("class")}))
    if cfg.model:
        print(f"installed into {install(out, cfg.model)}")
