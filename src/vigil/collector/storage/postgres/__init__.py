"""The PostgreSQL backend (``storage.url: postgresql://...``): the same repositories as
``sqlite/``, split the same way (``ingest_repos``, ``desk_repos``), over psycopg 3.

Most repositories' SQL is written once for both backends, in ``storage/*_sql.py``; here
they are that class joined with :class:`~collector.storage.postgres.sql_hooks.PgHooks`.
Changing one of them:

- a new Protocol method: once, in the shared ``*_sql.py`` class, in SQL both engines
  accept (``?`` placeholders, ``ON CONFLICT DO NOTHING`` rather than ``INSERT OR
  IGNORE``, an explicit ``ORDER BY`` wherever an order is relied on); what the engines
  spell differently goes through a hook of ``storage/sql_hooks.py`` (JSON, NULL-safe
  equality, IN lists, byte-order sorting, index hints), or, where the SQL must really
  differ, both texts side by side in the shared class with the reason;
- in ``ingest_repos`` (still one module per backend): the same method on the ``Pg*``
  class beside its ``Sqlite*`` twin, with ``%s`` placeholders, booleans as ``boolean``,
  JSON as ``jsonb`` (``Jsonb(...)`` to write), ``IS NOT DISTINCT FROM`` for SQLite's
  ``IS``;
- a new repository: its class in the module of its SQLite twin, one attribute on
  :class:`~collector.storage.postgres.backend.PgUnitOfWork`;
- a new table or column: a new numbered migration at the end of
  ``schema.MIGRATIONS`` (never edit a released one), and the table/columns in
  ``importer._TABLES``. ``tests/unit/storage/test_postgres.py`` fails until both
  schemas and the importer agree, and the contract suite runs every test on both.
"""
