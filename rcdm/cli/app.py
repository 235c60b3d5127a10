"""`rcdm app`: serve the Gradio app of the package (`rcdm.app`); gradio loads only when the command runs."""
from __future__ import annotations

from ..app.flags import add_app_arguments


def add_parser(sub) -> None:
    p = sub.add_parser("app", help="serve the Gradio app (sample, compare, interpolate, invariance, dream, report)",
                       description="Serve the RCDM Gradio app. It binds 127.0.0.1 with no public link unless "
                                   "--host or --share say otherwise; its limits are checked on the server.")
    add_app_arguments(p)
    p.set_defaults(func=run)


def run(args) -> None:
    from ..appcmd import cmd_app

    cmd_app(args)
