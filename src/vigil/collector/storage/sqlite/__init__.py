"""The embedded SQLite backend: schema and migrations (``schema``), encodings
(``codec``), queries (``ingest_repos``, ``desk_repos``), connection and unit of work
(``backend``)."""
