"""Backups, restores and decommission: the services the admin, the customer site, the API and the scheduler call.

Writes (each queues an Operation and returns it, or refuses at once with a ``cells.errors.Refused``:
``IllegalTransition`` naming the current state, ``OperationInProgress`` naming the operation in the way):

- ``instance_backup(instance=, kind="database"|"files")`` — on demand;
- ``instance_restore(instance=, point_in_time=)`` — the database into a NEW database, switched to in one step;
- ``instance_restore_files(instance=, backup=)`` — the share's content from a files backup;
- ``instance_restore_confirm(instance=)`` — drop the databases restores replaced, now;
- ``instance_decommission(instance=, confirm_name=)`` — archive, back up, drop, scrub, return the share;
- ``share_scrub(share=)`` — wipe a failed share (no instance) and return it to its pool;
- ``backups_run_due()`` / ``backups_expire()`` — the scheduler's passes.

Reads: ``restorable_window(instance=)`` and the rest of ``provisioning.backups.selectors``.
"""
from provisioning.backups.decommission import instance_decommission, share_scrub
from provisioning.backups.restore import instance_restore, instance_restore_confirm, instance_restore_files
from provisioning.backups.selectors import restorable_window
from provisioning.backups.services import backups_expire, backups_run_due, instance_backup

__all__ = [
    "backups_expire", "backups_run_due", "instance_backup", "instance_decommission", "instance_restore",
    "instance_restore_confirm", "instance_restore_files", "restorable_window", "share_scrub",
]
