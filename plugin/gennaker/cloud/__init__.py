"""The cloud layer: one model and one interface, several providers.

- ``model``: Image, ServerGroup, Instance, Health, LoadBalancer, Firewall, Capacity, Operation
- ``naming``: Spinnaker's ``app-stack-detail-v000`` names (Frigga)
- ``provider``: the ``CloudProvider`` interface, ``IdempotencyKey`` and the errors
- ``errors``: the error tree (re-exported by ``provider``)
- ``local``: the local provider (a package: provider, state, images, supervisor, proxy, ...)
- ``locks``: the per-cluster lock of deploys, promotes, rollbacks and the Clusters page's actions
- ``limits``: capacity limits per server group and per account

Nothing here imports a cloud SDK at module level: DAG files import it at parse time.
"""
