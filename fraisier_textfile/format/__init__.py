"""The Prometheus text format, pure: bytes in, bytes out; no files, no clock, no process state.

``textformat`` reads what node_exporter's Go parser reads and renders our own canonical form; ``layout``
writes and checks the layout line that lets a reader take a file the store wrote without re-checking it."""
