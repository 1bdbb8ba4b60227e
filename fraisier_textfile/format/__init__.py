"""The Prometheus text format, pure: bytes in, bytes out; no files, no clock, no process state.

``syntax`` reads one line as Go's parser does (names, escapes, floats, series keys); ``model`` is the document
(family blocks and the bookkeeping lines); ``span`` a block's lines kept as a span of the bytes read, edited without
being split; ``reader`` parses a whole file, taking one whose layout line vouches for it as written; ``layout`` is
that line; ``check`` finds what promtool would refuse beyond parsing; ``schema`` the families a writer owns, as
data; ``bookkeeping`` the typed codec of the ``# fraisier_textfile`` lines."""
