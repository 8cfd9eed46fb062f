"""Read a catalog with every preset check wired in."""

from __future__ import annotations

from prefect import task

from vstar_data.catalog import AUTO_TAR, Catalog, CatalogEntry, load_catalog
from vstar_model.backbones.presets import PRESETS


def check_tar(spec: str) -> None:
    from vstar_model.tar.unet import parse_tar

    if spec != AUTO_TAR:
        parse_tar(spec)


def read_catalog_checked(path_or_url: str, *, max_frames: int = 256) -> Catalog:
    """The catalog at ``path_or_url``; :class:`~vstar_data.catalog.CatalogError` names every problem."""
    return load_catalog(path_or_url, max_frames=max_frames, check_tar=check_tar, check_model=set(PRESETS))


@task(task_run_name="read-catalog")
def read_catalog(path_or_url: str, max_frames: int = 256) -> list[CatalogEntry]:
    # A list, not the Catalog: Prefect walks pydantic results as dicts, and Catalog iterates entries.
    return list(read_catalog_checked(path_or_url, max_frames=max_frames).entries)
