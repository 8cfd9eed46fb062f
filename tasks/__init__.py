"""Thin Prefect tasks over vstar_model (the method) and vstar_data (storage)."""
