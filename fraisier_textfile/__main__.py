"""``python -m fraisier_textfile``: the ``fraisier-textfile`` command group, for an environment whose scripts are not
on PATH (or whose ``fraisier`` script is Fraisier's)."""

from fraisier_textfile.cli import LastingImports

with LastingImports():
    from fraisier_textfile.cli.group import main

main()
