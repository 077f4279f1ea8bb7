"""``manage.py local_runtime start|status|stop`` (``scripts/dev status|stop``): the local instances' supervisor
(supervisord), apart from the hub.

``start`` starts it when it is not running (it then starts every instance whose program says so); ``status`` lists
the instance processes; ``stop`` shuts it down, stopping every local instance (the hub records nothing: its next
health pass finds them down, and ``start`` brings them back).
"""
from django.core.management.base import BaseCommand, CommandError

from provisioning.drivers.base import DriverError
from provisioning.drivers.local_supervisor import Supervisor


class Command(BaseCommand):
    help = "Start, show or stop the supervisor (supervisord) that runs the local instances' processes."

    def add_arguments(self, parser):
        parser.add_argument("action", choices=["start", "status", "stop"])

    def handle(self, *args, action, **options):
        supervisor = Supervisor.default()
        try:
            if action == "start":
                supervisor.ensure_running()
                self.stdout.write(f"Instance supervisor running (pid {supervisor.pid()}, {supervisor.root}).")
            elif action == "stop":
                stopped = supervisor.shutdown()
                self.stdout.write("Instance supervisor stopped, and every local instance with it." if stopped
                                  else "Instance supervisor was not running.")
            else:
                if not supervisor.running():
                    self.stdout.write("Instance supervisor is not running.")
                    return
                self.stdout.write(f"Instance supervisor running (pid {supervisor.pid()}, {supervisor.root}).")
                for info in supervisor.rpc().supervisor.getAllProcessInfo():
                    self.stdout.write(f"  {info['name']:<24} {info['statename']:<9} {info['description']}")
        except DriverError as error:
            raise CommandError(str(error)) from error
