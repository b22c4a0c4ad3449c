"""The cloud layer: one model and one interface, several providers.

- ``model``: Image, ServerGroup, Instance, Health, LoadBalancer, Firewall, Capacity, Operation
- ``naming``: Spinnaker's ``app-stack-detail-v000`` names (Frigga)
- ``provider``: the ``CloudProvider`` interface, ``IdempotencyKey`` and the errors
- ``errors``: the error tree (re-exported by ``provider``)
- ``state``: the local provider's SQLite state, shared by every Airflow process

Nothing here imports a cloud SDK at module level: DAG files import it at parse time.
"""
