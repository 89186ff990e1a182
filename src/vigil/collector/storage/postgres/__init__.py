"""The PostgreSQL backend (``storage.url: postgresql://...``): the same repositories as
``sqlite/``, split the same way (``ingest_repos``, ``desk_repos``), over psycopg 3.

Porting a change made to the SQLite backend:

- a new Protocol method: the same method on the ``Pg*`` class beside its ``Sqlite*``
  twin, with ``%s`` placeholders (``?`` in SQLite), booleans as ``boolean``, JSON as
  ``jsonb`` (``Jsonb(...)`` to write), ``IS NOT DISTINCT FROM`` for SQLite's ``IS``,
  ``ON CONFLICT DO NOTHING`` for ``INSERT OR IGNORE``, and an explicit ``ORDER BY``
  wherever SQLite's rowid order was relied on;
- a new repository: its class in the module of its SQLite twin, one attribute on
  :class:`~collector.storage.postgres.backend.PgUnitOfWork`;
- a new table or column: a new numbered migration at the end of
  ``schema.MIGRATIONS`` (never edit a released one), and the table/columns in
  ``importer._TABLES``. ``tests/unit/storage/test_postgres.py`` fails until both
  schemas and the importer agree, and the contract suite runs every test on both.
"""
