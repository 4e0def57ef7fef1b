"""Imported relatively by main.py, as xcore allows."""


def describe(services):
    return {"services": sorted(services), "plugd_name": services["plugd"].name,
            "module": __name__}
