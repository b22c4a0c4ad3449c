"""Airflow hooks: a cloud account (an Airflow connection) -> its :class:`~gennaker.cloud.provider.CloudProvider`."""
