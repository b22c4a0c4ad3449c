"""The Clusters API: applications, clusters, server groups and actions on them, inside Airflow's API server.

=================  ===============================================================
module             what it does
=================  ===============================================================
``app``            the FastAPI app and its routes (mounted at ``/gennaker``)
``service``        what each route does: permissions, cached reads, actions
``auth``           Airflow's auth manager -> application permissions; the cross-site rule
``cache``          per-account snapshots: a few seconds fresh, refreshed in the background
``reader``         one read of an account through ``CloudProvider.inventory`` (never starts a process)
``actions``        actions run through the stages' own code, followed to their end
``audit``          the audit trail of actions (a table in the state store)
``views``          the cloud model as the API shows it
``models``         the API's JSON shapes (camelCase)
=================  ===============================================================

The contract for clients (the Clusters page) is ``docs/clusters-api.md``. Nothing here is
imported when Airflow loads the plugin in a scheduler, worker or triggerer: the API
server asks for the app (``gennaker.plugin``), and only then is it built.
"""
