from django.apps import AppConfig


class CellsConfig(AppConfig):
    """The cell model: regions, reefs, pools, shares, instances, operations."""

    name = "cells"
    verbose_name = "Cells"
