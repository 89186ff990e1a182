"""The PostgreSQL backend (``storage.url: postgresql://...``): the same repositories as
``sqlite/``, split the same way (``ingest_repos``, ``desk_repos``), over psycopg 3."""
