"""Delivery: the durable ``outbox`` (SQLite spool of events) and the ``shipper`` that
sends its batches to the collector over the standard library's ``http.client``."""
