"""The collector's HTTP API: thin handlers by resource over one shared helper module.

``http`` holds what every handler shares (errors, parameter and body parsing, tokens,
the storage thread); ``render`` turns records into Markdown and API JSON; the other
modules hold the handlers of one resource each. The route table is
:func:`vigil.collector.app.setup_routes`; the API itself is documented in ``docs/api.md``.
"""
