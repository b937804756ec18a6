"""Cassandra backend: pyworkflow-engine 0.4.0's keyspace, purged with CQL a real cluster accepts.

URL: ``cassandra://[user:password@]host1,host2:9042/keyspace?local_dc=&read_consistency=&write_consistency=
&serial_consistency=&protocol_version=&concurrency=`` (see :mod:`.settings`; Cassandra 2.1 needs
``protocol_version=3``). The design, its guarantees beside a live engine and what remains, and the
measurements are in docs/backends/cassandra.md. In short: a paged token scan of ``workflow_runs`` finds
expired runs; each batch's runs get a purge marker (:mod:`.markers`, the purge's own table) before each
record is deleted in the version it was checked in (:mod:`.purge`), children first, and the rest of a
run (:mod:`.cascade`) goes after its record, read, counted and deleted ``USING TIMESTAMP`` of what was
read; the next purge finishes every marked run whose record is gone. Every statement is in :mod:`.cql`.

:attr:`CassandraBackend.requests` and :attr:`CassandraBackend.statements` count round trips and CQL
statements per statement name (an UNLOGGED batch is one request, its members are statements).
"""

from workflow_retention.backends.cassandra.backend import CassandraBackend

__all__ = ["CassandraBackend"]
