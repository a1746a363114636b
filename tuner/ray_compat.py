"""Where croptune meets Ray's behaviour beyond its documented API (Ray 2.60), in one place.

- probe_address: ray.init(address=...) retries a cluster address where nothing listens for
  minutes; one TCP connect says so in seconds.
- restored_search: Tuner.restore re-points restored trials at the experiment's new location but
  not the template of the trials the searcher adds (see the function).
"""

from __future__ import annotations

from trainable.errors import UserError

# ray.init retries an unreachable cluster for minutes; a cluster's head answers a TCP connect at once
ADDRESS_PROBE_TIMEOUT_S = 15.0


def probe_address(address: str, timeout_s: float = ADDRESS_PROBE_TIMEOUT_S) -> None:
    """UserError unless something accepts a TCP connection at the cluster's address: ray.init
    retries an address where nothing listens for minutes ("Failed to connect to GCS")."""
    import socket

    target = address.removeprefix("ray://")
    if address == "auto":  # the address `ray start` recorded on this machine (or RAY_ADDRESS)
        from ray._private.services import canonicalize_bootstrap_address

        try:
            target = canonicalize_bootstrap_address("auto")
        except Exception:  # noqa: BLE001 - nothing recorded: ray.init says so at once
            return
        if target is None:  # RAY_ADDRESS=local: nothing to probe
            return
    host, _, port = target.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except (OSError, ValueError) as exc:
        reason = f"no answer within {timeout_s:g} s" if isinstance(exc, TimeoutError) else (
            getattr(exc, "strerror", None) or str(exc) or type(exc).__name__)
        shown = address if target == address.removeprefix("ray://") else f"{address} ({target})"
        raise UserError(f"--address {shown}: no Ray cluster listens there ({reason}); start one with "
                        f"`ray start --head` or fix the address") from None


def restored_search(search_alg, storage_path: str, name: str):
    """The restored searcher, wrapped so that the trials it adds are written to `storage_path/name`.

    Tune 2.60 moves the restored trials to where the experiment is now (a copied or moved
    experiment), but restores the search generator's Experiment, the template of every new
    trial, with the storage it was pickled with: the new trials went to the old location."""
    import copy

    from ray.train._internal.storage import get_fs_and_path
    from ray.tune.search import SearchGenerator

    class StoragePinnedSearch(SearchGenerator):
        def set_state(self, state: dict) -> None:
            super().set_state(state)
            storage = getattr(self._experiment, "storage", None)
            if storage is None:
                return
            moved = copy.copy(storage)
            moved.storage_filesystem, moved.storage_fs_path = get_fs_and_path(storage_path, None)
            moved.experiment_dir_name = name
            self._experiment.storage = self._experiment.spec["storage"] = moved

    searcher = search_alg.searcher if isinstance(search_alg, SearchGenerator) else search_alg
    return StoragePinnedSearch(searcher)
