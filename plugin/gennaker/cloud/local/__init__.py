"""The local provider: an account on this host, no cloud needed (the demo's and the tests').

- ``provider``: :class:`~gennaker.cloud.local.provider.LocalProvider`, the ``CloudProvider`` of a local account
- ``state``: its SQLite state (images, server groups, instances, load balancers, operations, events; its
  pieces: ``state_db`` schema and transactions, ``state_groups``, ``state_resources``, ``state_operations``)
- ``images``: baking artifacts into immutable image folders (its pieces: ``image_runtimes`` bases,
  ``image_artifacts`` fetching and checking, ``image_python`` virtualenvs, ``image_store`` folders and ids)
- ``supervisor``: one process per server group keeping its instances running on 127.0.0.1 (its pieces:
  ``supervisor_options``, ``supervisor_health``, ``instance_processes``, ``reconcile``)
- ``proxy``: one HTTP reverse proxy per load balancer (its pieces: ``proxy_routing`` weights and firewalls,
  ``proxy_http`` forwarding, ``proxy_metrics`` per-second metrics, ``proxy_process`` listeners and lifecycle)
- ``processes``: the process helpers they share (pids, identity, detached start, locks, pid files, ports)
- ``watchdog``: health as it can be believed now; restarting dead supervisors and proxies
- ``procenv``, ``logfiles``, ``privfiles``, ``retention``: the processes' environment, rotated logs,
  private files, pruning of recorded rows

Nothing is imported here: a supervisor or proxy process imports only what it runs.
"""
