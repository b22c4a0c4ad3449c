"""Airflow DAG file: every pipeline spec under dags/pipelines/ (or $GENNAKER_PIPELINES) becomes a DAG.

One spec = one DAG (dag_id ``<application>.<name>``). A broken spec shows up as an
import error of its own file; the other pipelines still load. Nothing here touches
the network, a cloud SDK, Airflow Variables or the database.
"""

from gennaker.factory import load_dags

# The DAG processor's "safe mode" only opens files that mention both words: airflow DAG
load_dags(globals())
