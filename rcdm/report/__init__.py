"""`rcdm report`: every measurement of rcdm for one model or several, as one static page.

    from rcdm.report import ReportSettings, build_report
    build_report({"backbone": pipe_b, "projector": pipe_p}, "cifar10_jpeg.npz", "report/", ReportSettings())

Layout: `settings` (what is measured, and on what), `sections` (each section: the measurement, from rcdm.evaluate
and rcdm.analysis, plus intervals), `stats` (bootstrap and Wilson intervals), `store` (finished sections on disk,
atomic writes, the progress bar), `views` (rows and sentences per section), `page` (report.json, and index.html
from the Jinja2 template index.html.j2), `build` (the run). The command
`rcdm report` is rcdm.cli.report.
"""
_LAZY = {"build_report": "build", "ReportSettings": "settings", "inline_html": "page"}


def __getattr__(name):  # the heavy modules load on first use, so `rcdm --help` stays instant
    if name not in _LAZY:
        raise AttributeError(f"module 'rcdm.report' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f".{_LAZY[name]}", __name__), name)


__all__ = ["ReportSettings", "build_report", "inline_html"]
