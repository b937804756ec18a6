"""SQL backends (SQLite, PostgreSQL, MySQL/MariaDB) on one SQLAlchemy Core implementation.

:mod:`.backend` (the shared backend class), :mod:`.dialect` (every dialect hook),
:mod:`.client` (engine, transactions, retries, errors), :mod:`.layout` (pyworkflow's
tables), :mod:`.purge`, :mod:`.markers`, :mod:`.runs`, :mod:`.streams`,
:mod:`.orphans`, :mod:`.census`, :mod:`.seed`; one module per dialect,
:mod:`.sqlite`, :mod:`.postgres` and :mod:`.mysql`, each importing its driver
only when a backend is built. The design is in docs/backends/sql.md.
"""
