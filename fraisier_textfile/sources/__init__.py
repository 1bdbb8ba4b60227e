"""Sources of events that are not record calls: read under the store's lock, as its participants.

``fraisier_state``: the deployments Fraisier writes down in its own state database and status files."""

from __future__ import annotations
