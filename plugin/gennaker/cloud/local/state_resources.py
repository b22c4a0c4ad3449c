"""Images, load balancers and firewalls in the local state: one row each, the model's dict as JSON."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gennaker.cloud.local.state_db import StateFile, dumps, filters, ts
from gennaker.cloud.model import Firewall, Image, LoadBalancer


class ResourceRows(StateFile):
    """The ``images``, ``load_balancers`` and ``firewalls`` tables of the :class:`~.state.StateStore`."""

    # ----------------------------------------------------------------------- images

    def put_image(self, image: Image) -> None:
        """Store (or replace) an image."""
        self._put(
            "images",
            {
                "id": image.id,
                "account": image.account,
                "region": image.region,
                "package": image.package,
                "application": image.application,
                "inputs_hash": image.inputs_hash,
                "created": ts(image.created),
                "body": dumps(image.to_dict()),
            },
        )

    def get_image(self, image_id: str) -> Image:
        """One image by id."""
        return self._one(Image, "SELECT body FROM images WHERE id = ?", (image_id,), f"image {image_id}")

    def find_images(
        self,
        *,
        account: str | None = None,
        region: str | None = None,
        package: str | None = None,
        application: str | None = None,
        inputs_hash: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> list[Image]:
        """Images matching every given filter (``tags``: all of them), newest first."""
        where, params = filters(
            account=account, region=region, package=package, application=application, inputs_hash=inputs_hash
        )
        images = self._many(Image, f"SELECT body FROM images{where} ORDER BY created DESC, rowid DESC", params)
        wanted = dict(tags or {})
        return [image for image in images if wanted.items() <= image.tags.items()]

    def delete_image(self, image_id: str) -> bool:
        """Forget an image; False if there was none."""
        return self._delete("images", "id = ?", (image_id,))

    # ----------------------------------------------------------------------- load balancers and firewalls

    def put_load_balancer(self, load_balancer: LoadBalancer) -> None:
        """Store (or replace) a load balancer."""
        self._put("load_balancers", _owned_columns(load_balancer))

    def get_load_balancer(self, account: str, region: str, name: str) -> LoadBalancer:
        """One load balancer."""
        return self._one(LoadBalancer, *_owned_query("load_balancers", account, region, name), f"load balancer {name}")

    def list_load_balancers(
        self, *, account: str | None = None, region: str | None = None, application: str | None = None
    ) -> list[LoadBalancer]:
        """Load balancers matching every given filter, by name."""
        where, params = filters(account=account, region=region, application=application)
        return self._many(LoadBalancer, f"SELECT body FROM load_balancers{where} ORDER BY name", params)

    def delete_load_balancer(self, account: str, region: str, name: str) -> bool:
        """Forget a load balancer; False if there was none."""
        return self._delete("load_balancers", "account = ? AND region = ? AND name = ?", (account, region, name))

    def put_firewall(self, firewall: Firewall) -> None:
        """Store (or replace) a firewall."""
        self._put("firewalls", _owned_columns(firewall))

    def get_firewall(self, account: str, region: str, name: str) -> Firewall:
        """One firewall."""
        return self._one(Firewall, *_owned_query("firewalls", account, region, name), f"firewall {name}")

    def list_firewalls(
        self, *, account: str | None = None, region: str | None = None, application: str | None = None
    ) -> list[Firewall]:
        """Firewalls matching every given filter, by name."""
        where, params = filters(account=account, region=region, application=application)
        return self._many(Firewall, f"SELECT body FROM firewalls{where} ORDER BY name", params)

    def delete_firewall(self, account: str, region: str, name: str) -> bool:
        """Forget a firewall; False if there was none."""
        return self._delete("firewalls", "account = ? AND region = ? AND name = ?", (account, region, name))


def _owned_columns(resource: LoadBalancer | Firewall) -> dict[str, Any]:
    return {
        "account": resource.account,
        "region": resource.region,
        "name": resource.name,
        "application": resource.application,
        "body": dumps(resource.to_dict()),
    }


def _owned_query(table: str, account: str, region: str, name: str) -> tuple[str, tuple[str, ...]]:
    return f"SELECT body FROM {table} WHERE account = ? AND region = ? AND name = ?", (account, region, name)


__all__ = ["ResourceRows"]
