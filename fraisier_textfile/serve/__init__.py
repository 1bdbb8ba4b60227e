"""Serving: the HTTP exporter (``fraisier metrics``), its web config, the landing page and summary."""
