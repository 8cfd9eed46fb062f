"""Read a catalog with every preset check wired in."""

from __future__ import annotations

from prefect import task

from vstar_data.catalog import AUTO_TAR, Catalog, CatalogEntry, load_catalog
from vstar_model.backbones.presets import PRESETS, get_preset


def check_tar(spec: str) -> None:
    """A UNet preset (levels: ``64D1``) or a DiT one (blocks: ``b0-9D1``); which one an entry's model
    takes is checked with the run's settings (:func:`tasks.jobs.check_entries`)."""
    from vstar_model.tar.unet import parse_tar

    if spec == AUTO_TAR:
        return
    try:
        parse_tar(spec)
    except ValueError as unet_error:
        from vstar_model.tar.dit import parse_dit_tar

        try:
            parse_dit_tar(spec)
        except ValueError as dit_error:
            raise ValueError(f"{unet_error}; as a DiT preset: {dit_error}") from None


def check_frames(model: str, frames: int) -> None:
    get_preset(model).check_frames(frames)


def read_catalog_checked(path_or_url: str, *, max_frames: int = 256) -> Catalog:
    """The catalog at ``path_or_url``; :class:`~vstar_data.catalog.CatalogError` names every problem."""
    return load_catalog(path_or_url, max_frames=max_frames, check_tar=check_tar, check_model=set(PRESETS),
                        check_frames=check_frames)


@task(task_run_name="read-catalog")
def read_catalog(path_or_url: str, max_frames: int = 256) -> list[CatalogEntry]:
    # A list, not the Catalog: Prefect walks pydantic results as dicts, and Catalog iterates entries.
    return list(read_catalog_checked(path_or_url, max_frames=max_frames).entries)
