"""The Prometheus text format, pure: bytes in, bytes out; no files, no clock, no process state.

``syntax`` reads one line as Go's parser does (names, escapes, floats, series keys); ``model`` is the document
(family blocks and the bookkeeping lines); ``reader`` parses a whole file, taking one whose ``layout`` line vouches
for it as written; ``check`` finds what promtool would refuse beyond parsing."""
