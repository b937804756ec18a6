"""SQL backends (SQLite, PostgreSQL, MySQL/MariaDB) on one SQLAlchemy Core implementation.

:mod:`.base` holds the engine, transaction, retry and error handling and the
dialect hooks; :mod:`.purge`, :mod:`.sweeps` and :mod:`.seeding` the purge,
the keyed sweeps (schedules, streams, orphans) with the census, and the
seeder; :mod:`.schema` pyworkflow-engine 0.4.0's tables. The dialect modules
are :mod:`.sqlite`, :mod:`.postgres` and :mod:`.mysql`; each imports its
driver only when a backend is built, so the package imports without them.
"""
