"""Storage behind small interfaces: repository Protocols per aggregate and a unit of work
(``protocols``), plain records (``records``), backends (``sqlite/``), and the factory
that picks one from the configured URL (``factory``)."""
