"""The one build step of this package: ship the start-up hook's .pth file at the root of site-packages.

A .pth file runs only from the root of a site directory, and a wheel puts there what the build leaves at the root
of ``build_lib``: setuptools' ``build_py``, extended to copy ``fraisier_textfile_hook.pth`` there (and to list it
among its outputs), so that ``pip install`` writes it and lists it in the RECORD, and ``pip uninstall`` removes
it. pyproject.toml names this class (``[tool.setuptools.cmdclass]``); no setup.py and no ``wheel`` in the
interpreter are needed (pip's build isolation brings setuptools, and setuptools >= 70.1 builds wheels itself).
The module the .pth line imports, ``_fraisier_textfile_hook``, is an ordinary top-level module
(``py-modules``).
"""

from __future__ import annotations

import os

from setuptools.command.build_py import build_py as _setuptools_build_py

HOOK_PTH = "fraisier_textfile_hook.pth"


class build_py(_setuptools_build_py):  # setuptools names its commands in lower case
    def run(self) -> None:
        super().run()
        self.copy_file(HOOK_PTH, os.path.join(self.build_lib, HOOK_PTH), preserve_mode=False)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), os.path.join(self.build_lib, HOOK_PTH)]

    def get_source_files(self) -> list[str]:
        return [*super().get_source_files(), HOOK_PTH]
