"""Average the UNet weights of two exported pipelines of the same model ("model soup", Wortsman et al. 2022).

Two fine-tunes from one parent sit in one loss basin, so their weighted mean is a model too; it can keep most of one
run's fidelity gain while taking the other's lower FD. The output copies pipeline A (encoder record, scheduler,
sampling defaults; a relative encoder path is re-aimed from the new directory) and replaces its UNet weights with
`w * A + (1 - w) * B`. Its training history is A's, then the runs of B's branch that A lacks, then this average as a
run of 0 steps, so the table of runs still sums every optimizer step behind the weights.

    python tools/weight_average.py runs/soup runs/a/pipeline runs/b/pipeline --weight-a 0.6667
"""
import argparse
import json
import shlex
import sys
from pathlib import Path

from safetensors.torch import load_file

from rcdm.training.export import UNET_WEIGHTS as WEIGHTS
from rcdm.training.export import derive_pipeline, runs_behind


def read(pipe: Path) -> tuple[dict, dict, dict]:
    if not (pipe / "rcdm_pipeline.json").is_file():
        sys.exit(f"{pipe} is not an exported rcdm pipeline (no rcdm_pipeline.json); pass the directory `rcdm train` "
                 "exported, e.g. RUN/pipeline")
    meta = json.loads((pipe / "rcdm_pipeline.json").read_text())
    return meta, json.loads((pipe / "unet/config.json").read_text()), load_file(pipe / WEIGHTS)


def check_compatible(a: tuple, b: tuple) -> None:
    (meta_a, cfg_a, sd_a), (meta_b, cfg_b, sd_b) = a, b
    enc_a, enc_b = ({k: m["encoder"][k] for k in ("fingerprint", "layer", "dim")} for m in (meta_a, meta_b))
    if enc_a != enc_b:
        sys.exit(f"the two pipelines condition on different representations ({enc_a} vs {enc_b}); average only "
                 "runs of one model")
    differ = sorted(k for k in set(cfg_a) | set(cfg_b) if k != "_name_or_path" and cfg_a.get(k) != cfg_b.get(k))
    if differ or sd_a.keys() != sd_b.keys() or any(sd_a[k].shape != sd_b[k].shape for k in sd_a):
        sys.exit(f"the two UNets differ in architecture ({', '.join(differ) or 'weight names or shapes'})")


def merged_history(meta_a: dict, meta_b: dict) -> list[dict]:
    """A's runs, then those of B's branch that A lacks."""
    hist_a, hist_b = (runs_behind(m.get("training") or {}) for m in (meta_a, meta_b))
    shared = next((i for i, (x, y) in enumerate(zip(hist_a, hist_b)) if x != y), min(len(hist_a), len(hist_b)))
    return hist_a + hist_b[shared:]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="new pipeline directory (must not exist)")
    p.add_argument("a", type=Path, help="pipeline A (its encoder, scheduler and sampling records are kept)")
    p.add_argument("b", type=Path, help="pipeline B")
    p.add_argument("--weight-a", type=float, default=0.5, help="weight of A, in [0, 1] (default: 0.5, a uniform mean)")
    args = p.parse_args(argv)
    if not 0.0 <= args.weight_a <= 1.0:
        p.error(f"--weight-a must lie in [0, 1], got {args.weight_a}")
    if args.out.exists():
        p.error(f"{args.out} exists; choose a new directory so nothing is overwritten")  # before reading weights
    a, b = read(args.a), read(args.b)
    check_compatible(a, b)
    w = args.weight_a
    # fp32 arithmetic whatever the stored dtype, so fp16 weights do not lose the small differences being averaged.
    mean = {k: (w * v.float() + (1 - w) * b[2][k].float()).to(v.dtype).contiguous() for k, v in a[2].items()}
    command = shlex.join(["python", "tools/weight_average.py", *(sys.argv[1:] if argv is None else argv)])
    out = derive_pipeline(args.a, args.out, mean, command, history=merged_history(a[0], b[0]))
    meta = json.loads((out / "rcdm_pipeline.json").read_text())
    total = sum(h["steps"] for h in meta["training"]["history"])
    print(f"wrote {args.out}: {w:g} x {args.a} + {1 - w:g} x {args.b} ({total:,} optimizer steps behind it)")


if __name__ == "__main__":
    main()
