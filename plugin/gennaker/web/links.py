"""The Clusters page's URLs and the "Server group" link, kept in :mod:`gennaker.links` (operators use them too)."""

from __future__ import annotations

from gennaker.links import CLUSTERS_ROUTE, ServerGroupLink, clusters_page_url, run_page_url

__all__ = ["CLUSTERS_ROUTE", "ServerGroupLink", "clusters_page_url", "run_page_url"]
