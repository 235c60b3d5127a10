"""The reference ADM (rcdm.adm) at full size on this machine: parameter count, the time to convert a released-
layout checkpoint of random weights (tests/test_adm.GDUNet stands in for guided-diffusion's UNetModel), and
seconds per 128 px ancestral step at batch 1 and 8 (median of 3, float32, DDPM with the learned variance).

    python benchmarks/adm_reference.py [--threads 2] [--out benchmarks/adm_reference.json]
"""
import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    p.add_argument("--out", default=str(HERE / "adm_reference.json"), help="output JSON")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from test_adm import GDUNet

    from rcdm.convert import build_unet, convert_state_dict
    from rcdm.schedulers import training_scheduler

    torch.manual_seed(0)
    ref = GDUNet(2048, mc=256, mult=(1, 1, 2, 3, 4), nres=2, attn=(2, 3, 4), heads=4)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "rcdm_ema_random_trunk.pt"
        torch.save(ref.state_dict(), path)
        del ref
        t0 = time.perf_counter()
        state = torch.load(path, map_location="cpu", weights_only=True)
        unet = build_unet(state)
        converted = convert_state_dict(state, unet)
        unet = unet.to_empty(device="cpu")
        unet.load_state_dict({**unet.state_dict(), **converted,
                              "embedding_mean": torch.zeros(2048), "embedding_std": torch.ones(2048)})
        convert_s = time.perf_counter() - t0
    unet.eval()
    n = sum(p.numel() for p in unet.parameters())
    sched = training_scheduler("epsilon", variance_type="learned_range")
    sched.set_timesteps(100)
    step_s = {}
    for b in (1, 8):
        x, h = torch.randn(b, 3, 128, 128), torch.randn(b, 2048)
        times = []
        for t in sched.timesteps[:3]:
            t0 = time.perf_counter()
            with torch.no_grad():
                out = unet(x, t, h).sample
            x = sched.step(out, t, x).prev_sample
            times.append(time.perf_counter() - t0)
        step_s[b] = statistics.median(times)
    res = {"parameters": n, "convert_seconds": round(convert_s, 1), "threads": args.threads,
           "seconds_per_step": {str(b): round(s, 2) for b, s in step_s.items()}}
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
