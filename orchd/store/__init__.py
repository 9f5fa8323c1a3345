"""The storage layer: the store interface, its SQLite implementation, the read side and the
operator tools on the database file.

Nothing is imported here: ``orchd backup`` and ``orchd check`` (``store.maintenance``) run on the
CLI's fast path, which must not load the SQLite store's dependencies.
"""
