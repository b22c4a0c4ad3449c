"""gennaker: continuous delivery on Apache Airflow.

Pipeline specs (YAML) become Airflow DAGs whose tasks bake, deploy, canary and
promote. This module stays light: importing it must not import Airflow, so the
plugin entry point and the CLI start fast.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
