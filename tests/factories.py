"""Small builders of model rows for tests: real rows in the real database, sensible defaults."""
import itertools

from django.contrib.auth import get_user_model

from cells.choices import PoolKind, PoolStatus, Provider, ReefStatus
from cells.models import Instance, Pool, Reef, Region
from cells.services import pool_ensure_shares

_seq = itertools.count(1)

DEFAULT_PROVIDER = {
    PoolKind.DATABASE: Provider.SQLITE,
    PoolKind.STORAGE: Provider.LOCAL_FS,
    PoolKind.COMPUTE: Provider.LOCAL_COMPUTE,
}


def make_user(**fields):
    n = next(_seq)
    fields.setdefault("username", f"user{n}")
    fields.setdefault("email", f"user{n}@example.com")
    password = fields.pop("password", "correct horse battery staple")
    return get_user_model().objects.create_user(password=password, **fields)


def make_region(**fields):
    n = next(_seq)
    fields.setdefault("slug", f"region-{n}")
    fields.setdefault("name", f"Region {n}")
    return Region.objects.create(**fields)


def make_reef(region=None, **fields):
    fields.setdefault("slug", f"reef-{next(_seq)}")
    fields.setdefault("status", ReefStatus.ACTIVE)
    fields.setdefault("ingress_address", "127.0.0.1")
    return Reef.objects.create(region=region or make_region(), **fields)


def make_pool(reef=None, kind=PoolKind.DATABASE, **fields):
    fields.setdefault("name", f"{kind}-{next(_seq)}")
    fields.setdefault("provider", DEFAULT_PROVIDER[kind])
    fields.setdefault("capacity", 10)
    fields.setdefault("status", PoolStatus.AVAILABLE)
    pool = Pool.objects.create(reef=reef or make_reef(), kind=kind, **fields)
    if kind == PoolKind.STORAGE:
        pool_ensure_shares(pool=pool)
    return pool


POSTGRES_POOL_CONFIG = {"host": "127.0.0.1", "port": 5432, "admin_user": "postgres"}


def make_cell(reef=None, capacity=10, database_provider=Provider.SQLITE, **reef_fields):
    """A reef with one database, one storage and one compute pool of ``capacity`` slots each."""
    reef = reef or make_reef(**reef_fields)
    config = POSTGRES_POOL_CONFIG if database_provider == Provider.POSTGRES else {}
    return {
        "reef": reef,
        "database": make_pool(reef, PoolKind.DATABASE, capacity=capacity, provider=database_provider, config=config),
        "storage": make_pool(reef, PoolKind.STORAGE, capacity=capacity),
        "compute": make_pool(reef, PoolKind.COMPUTE, capacity=capacity),
    }


def make_instance(owner=None, region=None, **fields):
    fields.setdefault("name", f"inst-{next(_seq)}")
    fields.setdefault("server_version", "2026.4.1")
    reef = fields.get("reef")
    region = region or (reef.region if reef else make_region())
    return Instance.objects.create(owner=owner or make_user(), region=region, **fields)
