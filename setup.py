"""Which packages the sdrt distribution holds; everything else is in pyproject.toml.

Four top-level folders make one import package: ``sdrt/`` is ``sdrt``, and ``export/``,
``engines/`` and ``benchmarks/`` are ``sdrt.export``, ``sdrt.engines`` and
``sdrt.benchmarks``. pyproject.toml's ``packages.find`` cannot put a prefix on what it
finds, so the subpackages are found here, folder by folder, and a new subpackage (a folder
with an ``__init__.py``) is in the wheel without anyone listing it.
"""

from setuptools import find_packages, setup

# import name -> folder
ROOTS = {
    "sdrt": "sdrt",
    "sdrt.export": "export",
    "sdrt.engines": "engines",
    "sdrt.benchmarks": "benchmarks",
}
# Folders of data files, not code: shipped as namespace packages so that setuptools
# ships their files (package-data below) without warning that they are not packages.
DATA_PACKAGES = {"sdrt.export.data": ["*.txt"]}


def packages() -> list[str]:
    found = []
    for name, folder in ROOTS.items():
        found += [name] + [f"{name}.{sub}" for sub in find_packages(folder)]
    return found + list(DATA_PACKAGES)


setup(package_dir=ROOTS, packages=packages(), package_data=DATA_PACKAGES)
