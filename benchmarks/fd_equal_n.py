"""FD in the encoder's space at equal sample sizes: samples vs real and real vs real, both N vs N.

FD is biased upwards at small n, so comparing 200 samples vs 200 real images with real halves of 100 vs 100 (what
`rcdm evaluate` reports beside each other) overstates the gap to the calibration. Here the first N test images are
the references (one sample each, the model's recorded sampler unless given), and the calibration is the first N
real images vs the next N.

The samples come from the first N images' embeddings, so comparing them with those same N images favours them
(each sample is drawn towards its own reference), while real vs real compares two disjoint sets. The held-out row
compares the samples with the next N real images instead: the same pairing as real vs real, so the two numbers can
be set side by side even when the model is close to the calibration.

    python benchmarks/fd_equal_n.py --data cifar10_jpeg.npz:test --model rcdm-cifar10-backbone --n 500 \
        --dtype bfloat16 --seed 0 --out fd500.json
"""
import argparse
import json
from pathlib import Path

from rcdm import Sampling, sample
from rcdm.data import open_dataset
from rcdm.evaluate import read_references
from rcdm.flags import load_pipeline
from rcdm.metrics import frechet_distance


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="pipeline directory or shipped model name (default: the default)")
    p.add_argument("--data", required=True, help="reference images, e.g. cifar10_jpeg.npz:test")
    p.add_argument("--n", type=int, default=500, help="images per side (default: 500; needs 2N readable images)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's recorded choice)")
    p.add_argument("--scheduler", default=None, help="sampler (default: the model's recorded choice)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default: 0)")
    p.add_argument("--dtype", default="bfloat16", help="denoiser precision (default: bfloat16)")
    p.add_argument("--out", default=None, help="also write the numbers as JSON here")
    args = p.parse_args()
    pipe = load_pipeline(args.model, "cpu", args.dtype)
    refs = read_references(open_dataset(args.data, "test"), 2 * args.n, [pipe.encoder])
    h = refs.feats[0]  # (2N, D)
    run = Sampling(num_inference_steps=args.steps, scheduler=args.scheduler, seed=args.seed).resolve(pipe)
    x = sample(pipe, h[: args.n], refs.indices[: args.n], run)  # (N, 3, R, R)
    h_hat = pipe.encoder.encode(x, batch_size=256).cpu()
    res = {"model": str(args.model), "n": args.n, "sampling": run.describe(),
           "fd_samples_vs_real": frechet_distance(h_hat, h[: args.n]),
           "fd_samples_vs_heldout_real": frechet_distance(h_hat, h[args.n:]),
           "fd_real_vs_real": frechet_distance(h[args.n:], h[: args.n])}
    print(json.dumps(res))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
