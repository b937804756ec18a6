"""Cassandra: pyworkflow-engine 0.4.0's keyspace, purged with CQL a real cluster accepts.

Options and errors: :class:`CassandraBackend`. The design: ``docs/backends/cassandra.md``.
"""

from .backend import CassandraBackend

__all__ = ["CassandraBackend"]
