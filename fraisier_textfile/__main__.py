"""``python -m fraisier_textfile``: the ``fraisier-textfile`` command group, for an environment whose scripts are not
on PATH (or whose ``fraisier`` script is Fraisier's)."""

from fraisier_textfile.cli import LastingImports, run_to_the_end

with LastingImports():
    from fraisier_textfile.cli.group import main

run_to_the_end(main)
