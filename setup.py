"""Maps the repository's top-level folders onto one import namespace.

The repo keeps `models/`, `wsi_pipeline/` and `configs/` at the top level (the design card),
but installs them as `promptnucseg.models`, `promptnucseg.wsi_pipeline` and
`promptnucseg.configs`, so that a generic name like `models` never lands in site-packages.
A plain checkout gets the same names from the finder in `promptnucseg/__init__.py`
(ARCHITECTURE.md, "Layout").
"""
from setuptools import find_packages, setup

TOP_LEVEL = {"models": "models", "wsi_pipeline": "wsi_pipeline", "configs": "configs"}

packages = ["promptnucseg"]
package_dir = {"promptnucseg": "promptnucseg"}
for name, folder in TOP_LEVEL.items():
    for sub in [name] + [f"{name}.{p}" for p in find_packages(where=folder)]:
        packages.append(f"promptnucseg.{sub}")
    package_dir[f"promptnucseg.{name}"] = folder

setup(packages=packages, package_dir=package_dir)
