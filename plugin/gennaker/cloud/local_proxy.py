"""``python -m gennaker.cloud.local_proxy``: the load balancer proxy's entry point of gennaker 0.1.

The local provider now lives in ``cloud/local/``.

Supervisors and proxies started by an earlier gennaker keep running through an upgrade, and their watchdogs
start the ones that die by this name: it stays runnable, and runs :mod:`gennaker.cloud.local.proxy`.
"""

if __name__ == "__main__":
    import sys

    from gennaker.cloud.local.proxy import main

    sys.exit(main())
