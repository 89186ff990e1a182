"""The embedded SQLite backend: schema and migrations (``schema``), encodings
(``codec``), queries (``ingest_repos``; ``desk_repos`` and the other ``*_repo(s)`` join
the shared SQL of ``storage/*_sql.py`` with ``sql_hooks``), connection and unit of work
(``backend``)."""
