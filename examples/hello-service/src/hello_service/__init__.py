"""hello-service: the demo service gennaker bakes, deploys, canaries and promotes.

``python -m hello_service`` serves ``/``, ``/version``, ``/health`` and ``/metrics`` on
``$HOST:$PORT``. Each release carries its own behaviour (``behaviour.json``: added
latency, an error rate, a start-up delay), so a bad release can be shown failing a canary.
"""

from __future__ import annotations

from hello_service.config import Behaviour, Settings, package_version

__all__ = ["Behaviour", "Settings", "package_version"]
