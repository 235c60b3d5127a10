"""The app's command-line flags, shared by `rcdm app` and `python app/app.py`. No gradio, no torch: the CLI's
`--help` reads them."""
from __future__ import annotations

import argparse

DEFAULT_CONCURRENCY = 1  # one sampling job at a time: a single job already uses every core (or the whole GPU)
DEFAULT_MAX_QUEUE = 32


def add_app_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", nargs="+", action="extend", default=None, metavar="DIR",
                   help="pipeline directories or shipped model names to offer (repeatable; default: every shipped "
                        "model, from rcdm.resources.pretrained_root())")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default: 127.0.0.1, this machine only; 0.0.0.0 exposes it to the network)")
    p.add_argument("--port", type=int, default=7860, help="port to serve on (default: 7860)")
    p.add_argument("--share", action="store_true",
                   help="also create a public gradio.live link (off by default: anyone with the link can use it)")
    p.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY,
                   help=f"sampling jobs run at the same time; the rest wait in the queue (default: "
                        f"{DEFAULT_CONCURRENCY})")
    p.add_argument("--max-queue", type=int, default=DEFAULT_MAX_QUEUE,
                   help=f"requests that may wait in the queue; more are refused with 'queue full' (default: "
                        f"{DEFAULT_MAX_QUEUE})")
