"""Register the hub's recurring work with django-q2 (also done after every migrate)."""
from django.core.management.base import BaseCommand

from provisioning.schedules import schedules_sync


class Command(BaseCommand):
    help = "Create or update the hub's django-q2 schedules by name; safe to repeat."

    def handle(self, *args, **options):
        for name in schedules_sync():
            self.stdout.write(f"schedule ready: {name}")
