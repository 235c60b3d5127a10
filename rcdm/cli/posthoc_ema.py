"""`rcdm posthoc-ema`: choose the EMA length after training (EDM2's post-hoc EMA, Karras et al. 2024).

    rcdm train ... --posthoc-ema 0.05 0.10 --output-dir runs/x      # keeps two power-function EMAs, with snapshots
    rcdm posthoc-ema runs/x --sigma-rel 0.03 0.05 0.08 0.12 0.18    # one pipeline per length: runs/x/pipeline-ema-*

Each output is the run's exported pipeline with the weights of an EMA of relative length sigma_rel (its width as a
fraction of the training length; EDM2's best were 0.05-0.15), reconstructed from the snapshots up to --step. Score
them (`rcdm evaluate` on held-out images) and keep the best. A fit error above about 0.1 means the snapshots cannot
express that length well (too few snapshots, or a length far outside the recorded ones). The maths: rcdm.phema.
"""
from __future__ import annotations

import argparse
import shlex
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("posthoc-ema", help="EMAs of any length after training, from a run's --posthoc-ema snapshots", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="the run's --output-dir (its posthoc-ema/ folder holds the snapshots)")
    p.add_argument("--sigma-rel", type=float, nargs="+", required=True,
                   help="relative EMA lengths to make, each in (0, 0.28), e.g. 0.05 0.08 0.12")
    p.add_argument("--step", type=int, default=None,
                   help="the training step to reconstruct at; snapshots after it are not used (default: the last)")
    p.add_argument("--pipeline", default=None,
                   help="the exported pipeline whose files (config, encoder, scheduler) the outputs copy "
                        "(default: RUN/pipeline)")
    p.add_argument("--out-dir", default=None,
                   help="where the pipelines go, as pipeline-ema-<sigma_rel> (default: RUN); existing ones are "
                        "refused, never overwritten")
    p.add_argument("--dry-run", action="store_true",
                   help="list the snapshots and each length's fit error, and write nothing")
    p.set_defaults(func=run)


def run(args) -> None:
    from ..phema import list_snapshots, posthoc_plan, sigma_rel_to_gamma
    from ..training.export import export_posthoc_ema

    for s in args.sigma_rel:
        sigma_rel_to_gamma(s)  # a bad length is refused before any work
    snapshots = list_snapshots(args.run)
    steps = sorted({s.step for s in snapshots})
    recorded = sorted({s.sigma_rel for s in snapshots})
    print(f"{len(snapshots)} snapshots: sigma_rel {recorded} at {len(steps)} steps ({steps[0]}-{steps[-1]})")
    template = Path(args.pipeline or Path(args.run) / "pipeline")
    if not args.dry_run and not (template / "rcdm_pipeline.json").is_file():
        raise FileNotFoundError(f"{template} is not an exported pipeline: the run has not finished (or was "
                                "preempted); pass --pipeline with an export of the same model")
    out_dir = Path(args.out_dir or args.run)
    command = shlex.join(["rcdm", "posthoc-ema", args.run, "--sigma-rel", *map(str, args.sigma_rel)]
                         + (["--step", str(args.step)] if args.step is not None else []))
    for sigma_rel in args.sigma_rel:
        if args.dry_run:
            record = posthoc_plan(snapshots, sigma_rel, args.step)[2]
            print(f"sigma_rel {sigma_rel:g} at step {record['step']}: fit error {record['fit_error']:.4f}")
            continue
        out, record = export_posthoc_ema(template, out_dir / f"pipeline-ema-{sigma_rel:g}", snapshots, sigma_rel,
                                         args.step, command)
        print(f"sigma_rel {sigma_rel:g} at step {record['step']}: fit error {record['fit_error']:.4f} -> {out}")
