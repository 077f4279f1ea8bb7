"""Backups, their schedules, restores and switched databases, for staff.

Backups, restores and switched databases are records the hub's services write: read-only here. A
schedule's cadence and retention are the one thing staff edit.
"""
from django.contrib import admin
from django.template.defaultfilters import filesizeformat

from portal.admin.audit import AuditedModelAdmin
from provisioning.models import Backup, BackupSchedule, InstanceDatabase, Restore


class ReadOnlyAdmin(AuditedModelAdmin):
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Backup)
class BackupAdmin(ReadOnlyAdmin):
    list_display = [
        "id", "instance", "kind", "reason", "state", "taken_at", "size", "encrypted_with", "expires_at",
    ]
    list_filter = ["kind", "state", "reason", "pool__provider", "instance__region"]
    search_fields = ["instance__name", "location", "checksum", "source"]
    list_select_related = ["instance"]
    date_hierarchy = "started_at"
    show_full_result_count = False
    fields = [
        "instance", "kind", "reason", "state", "pool", "operation", "source", "started_at", "finished_at",
        "taken_at", "location", "size_bytes", "checksum", "encrypted_with", "expires_at", "deleted_at",
        "details", "error",
    ]
    readonly_fields = fields

    @admin.display(description="size", ordering="size_bytes")
    def size(self, backup):
        return filesizeformat(backup.size_bytes) if backup.size_bytes is not None else "—"


@admin.register(BackupSchedule)
class BackupScheduleAdmin(AuditedModelAdmin):
    list_display = [
        "instance", "enabled", "database_every_hours", "files_every_hours", "retention_days", "next_database_at",
        "next_files_at",
    ]
    list_filter = ["enabled"]
    search_fields = ["instance__name"]
    list_select_related = ["instance"]
    fields = [
        "instance", "enabled", "database_every_hours", "files_every_hours", "retention_days", "next_database_at",
        "next_files_at",
    ]
    readonly_fields = ["instance"]

    def has_add_permission(self, request):
        return False  # the scheduled pass makes one for every running instance

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Restore)
class RestoreAdmin(ReadOnlyAdmin):
    list_display = [
        "id", "instance", "kind", "state", "point_in_time", "backup", "new_database", "old_database",
        "keep_old_until", "old_dropped_at", "created_at",
    ]
    list_filter = ["kind", "state"]
    search_fields = ["instance__name", "new_database", "old_database"]
    list_select_related = ["instance", "backup"]
    date_hierarchy = "created_at"
    readonly_fields = [
        "instance", "kind", "state", "backup", "point_in_time", "operation", "requested_by", "new_database",
        "old_database", "safeguard", "created_at", "finished_at", "keep_old_until", "old_dropped_at",
        "confirmed_by",
    ]
    fields = readonly_fields


@admin.register(InstanceDatabase)
class InstanceDatabaseAdmin(ReadOnlyAdmin):
    list_display = ["instance", "name", "restore", "updated_at"]
    search_fields = ["instance__name", "name"]
    list_select_related = ["instance", "restore"]
    fields = ["instance", "name", "restore", "updated_at"]
    readonly_fields = fields
