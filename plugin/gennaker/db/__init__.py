"""gennaker's shared state: tables every worker, triggerer and API server of a deployment sees.

The cluster locks and the Clusters page's audit trail live in a SQL database that all
machines reach (by default Airflow's own metadata database), not in a file of one host:
:mod:`~gennaker.db.engine` finds the database, :mod:`~gennaker.db.tables` describes the
``gennaker_`` tables and :mod:`~gennaker.db.migrate` creates them (``gennaker db migrate``).
"""
