"""`rcdm app`: serve the Gradio app in `app/app.py`. Gradio is imported only when the command runs, so
`rcdm --help` stays instant and the package works without the `app` extra."""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

APP_FILE = Path(__file__).resolve().parents[1] / "app" / "app.py"


def add_app_arguments(p: argparse.ArgumentParser) -> None:
    """The app's flags, shared by `rcdm app` and `python app/app.py`."""
    p.add_argument("--model", nargs="+", action="extend", default=None, metavar="DIR",
                   help="pipeline directories or shipped model names to offer (repeatable; default: every model "
                        "in pretrained/)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default: 127.0.0.1, this machine only; 0.0.0.0 exposes it to the network)")
    p.add_argument("--port", type=int, default=7860, help="port to serve on (default: 7860)")
    p.add_argument("--share", action="store_true",
                   help="also create a public gradio.live link (off by default: anyone with the link can use it)")
    p.add_argument("--concurrency", type=int, default=1,
                   help="sampling jobs run at the same time; the rest wait in the queue (default: 1)")
    p.add_argument("--max-queue", type=int, default=32,
                   help="requests that may wait in the queue; more are refused with 'queue full' (default: 32)")


def load_app_module():
    """Import app/app.py from the repository checkout beside the package (an editable install)."""
    if not APP_FILE.is_file():
        raise FileNotFoundError(f"{APP_FILE} not found: `rcdm app` runs the app from a repository checkout "
                                "(pip install -e '.[app]').")
    spec = importlib.util.spec_from_file_location("rcdm_app", APP_FILE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # registered before running it, as a normal import would be
    spec.loader.exec_module(module)
    return module


def cmd_app(args) -> None:
    try:
        import gradio  # noqa: F401
    except ImportError as e:
        raise FileNotFoundError("`rcdm app` needs gradio: pip install -e '.[app]'") from e
    load_app_module().launch_app(args.model, host=args.host, port=args.port, share=args.share,
                                 concurrency=args.concurrency, max_queue=args.max_queue)


def add_parser(sub) -> None:
    p = sub.add_parser("app", help="serve the Gradio app (sample, compare, interpolate)",
                       description="Serve the RCDM Gradio app. It binds 127.0.0.1 with no public link unless "
                                   "--host or --share say otherwise; its limits are checked on the server.")
    add_app_arguments(p)
    p.set_defaults(func=cmd_app)
