"""Seed a demo topology and a staff login; safe to run again (it changes nothing the second time)."""
import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from cells.choices import Cloud, PoolKind, PoolStatus, Provider, ReefStatus, RegionStatus
from cells.models import Pool, Reef, Region
from cells.services import pool_ensure_shares
from provisioning import drivers

DEMO_POOLS = [
    # (name, kind, provider, capacity); each pool gets what its driver derives for a new pool (SQLite: Litestream
    # replication, so the embedded default restores to any second).
    ("db-1", PoolKind.DATABASE, Provider.SQLITE, 50),
    ("files-1", PoolKind.STORAGE, Provider.LOCAL_FS, 10),
    ("compute-1", PoolKind.COMPUTE, Provider.LOCAL_COMPUTE, 50),
]


class Command(BaseCommand):
    help = "Create the demo topology (a local region, two reefs with three pools each) and a staff login."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin")
        parser.add_argument("--email", default="admin@example.com")

    @transaction.atomic
    def handle(self, *args, username, email, **options):
        region, _ = Region.objects.get_or_create(
            slug="local",
            defaults={"name": "Local", "cloud": Cloud.LOCAL, "location": "localhost", "status": RegionStatus.ACTIVE},
        )
        for ring, reef_slug in enumerate(["reef-1", "reef-2"]):
            reef, _ = Reef.objects.get_or_create(
                region=region,
                slug=reef_slug,
                defaults={
                    "status": ReefStatus.ACTIVE,
                    "max_instances": 50,
                    "rollout_ring": ring,
                    "ingress_address": f"127.0.0.{ring + 1}",
                },
            )
            for name, kind, provider, capacity in DEMO_POOLS:
                pool, _ = Pool.objects.get_or_create(
                    reef=reef,
                    name=name,
                    defaults={"kind": kind, "provider": provider, "capacity": capacity, "status": PoolStatus.AVAILABLE},
                )
                derived = drivers.for_pool(pool).derived_config()
                if derived and any(pool.config.get(key) != value for key, value in derived.items()):
                    pool.config = {**pool.config, **derived}
                    pool.save(update_fields=["config"])
                if kind == PoolKind.STORAGE:
                    pool_ensure_shares(pool=pool)
        self.stdout.write(f"Demo topology ready: region {region.slug}, {region.reefs.count()} reefs.")

        User = get_user_model()
        if User.objects.filter(username=username).exists():
            self.stdout.write(f"Staff login {username!r} already exists (its password was printed when it was made).")
            return
        password = secrets.token_urlsafe(12)
        User.objects.create_superuser(username=username, email=email, password=password)
        self.stdout.write(self.style.SUCCESS(f"Staff login created — username: {username}  password: {password}"))
