"""`rcdm app`: serve the Gradio app of the package, `rcdm.app`. Gradio is imported only when the command runs, so
`rcdm --help` stays instant and the package works without the `app` extra."""
from __future__ import annotations


def cmd_app(args) -> None:
    try:
        import gradio  # noqa: F401
    except ImportError as e:
        raise ImportError("`rcdm app` needs gradio: pip install 'rcdm[app]'") from e
    from .app.blocks import launch_app  # gradio: an optional extra, imported only when the app runs

    launch_app(args.model, host=args.host, port=args.port, share=args.share, concurrency=args.concurrency,
               max_queue=args.max_queue)
