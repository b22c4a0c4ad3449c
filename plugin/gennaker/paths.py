"""Where gennaker keeps its files on a host: the gennaker home.

Neutral ground: the local provider's state, the spec cache, the artifact folder and the
cluster locks all live under it, and none of them should import another to find it.
"""

from __future__ import annotations

import os
from pathlib import Path


def gennaker_home() -> Path:
    """``$GENNAKER_HOME``, else ``$AIRFLOW_HOME/gennaker``, else ``~/airflow/gennaker``."""
    if os.environ.get("GENNAKER_HOME"):
        return Path(os.environ["GENNAKER_HOME"]).expanduser()
    airflow_home = os.environ.get("AIRFLOW_HOME")
    return (Path(airflow_home).expanduser() if airflow_home else Path.home() / "airflow") / "gennaker"


__all__ = ["gennaker_home"]
