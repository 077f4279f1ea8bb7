"""Run one operation in the foreground (what a worker does with its task), for staff and drills."""
from django.core.management.base import BaseCommand

from provisioning.operations import operation_run


class Command(BaseCommand):
    help = "Run or resume operation ID now, in this process."

    def add_arguments(self, parser):
        parser.add_argument("operation_id", type=int)

    def handle(self, *args, operation_id, **options):
        state = operation_run(operation_id)
        self.stdout.write(f"operation {operation_id}: {state or 'not claimable (finished or held by a live worker)'}")
