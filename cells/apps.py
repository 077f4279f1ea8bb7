from django.apps import AppConfig
from django.db.models.signals import post_migrate, pre_migrate

from cells import sqlite_triggers


class CellsConfig(AppConfig):
    """The cell model: regions, reefs, pools, shares, instances, operations."""

    name = "cells"
    verbose_name = "Cells"

    def ready(self):
        pre_migrate.connect(sqlite_triggers.drop_before_migrate, dispatch_uid="cellhub-sqlite-triggers-drop")
        post_migrate.connect(sqlite_triggers.create_after_migrate, dispatch_uid="cellhub-sqlite-triggers-create")
