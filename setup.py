"""What goes into the wheel; everything else about the package is in pyproject.toml.

The shipped models and examples live in the checkout's top-level `pretrained/`. A wheel carries them as the package
data `rcdm/pretrained/` (the package `rcdm.pretrained` is mapped onto that folder), so an installed rcdm has its
default model; `rcdm.resources.pretrained_root()` finds either place. pyproject.toml alone cannot say this: its
package finder cannot be combined with a package mapped from outside `rcdm/`.
"""
from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["rcdm", "rcdm.*"]), "rcdm.pretrained"],
    package_dir={"rcdm.pretrained": "pretrained"},
    package_data={"rcdm.pretrained": ["**/*"], "rcdm.report": ["*.j2"]},
)
