"""The old import path of the command group: ``fraisier_textfile.cli.commands.main`` and the names imported
from here before the commands moved to a module each (``group``, ``record``, ``textfile``, ``serve``,
``install``)."""

from __future__ import annotations

from fraisier_textfile.cli.group import InvalidInput as InvalidInput
from fraisier_textfile.cli.group import Settings as Settings
from fraisier_textfile.cli.group import complete as complete
from fraisier_textfile.cli.group import library_errors as library_errors
from fraisier_textfile.cli.group import main as main
from fraisier_textfile.cli.group import pass_settings as pass_settings
from fraisier_textfile.cli.group import seconds as seconds
from fraisier_textfile.cli.textfile import unreadable_by_node_exporter as unreadable_by_node_exporter
