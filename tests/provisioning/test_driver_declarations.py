"""One home per provider: every driver declares what the hub must know of it, keeps its base class's contract,
and the services read the declaration (host keys never copied, capabilities refused before any work)."""
import inspect
from datetime import timedelta

import pytest
from django.utils import timezone

from cells.choices import PROVIDERS_BY_KIND, Cloud, InstanceState, PoolKind, PoolStatus, Provider
from cells.errors import NOT_SUPPORTED, NotSupported
from cells.models import Instance, Pool, Reef
from provisioning import drivers
from provisioning.backups.restore import instance_restore, instance_restore_files
from provisioning.backups.services import backups_expire
from provisioning.capacity import capacity_top_up_pass, pool_mark_failed, pool_replace
from provisioning.drivers import base
from provisioning.drivers.base import Capabilities
from provisioning.models import Backup, BackupKind, BackupState, Restore
from tests.factories import make_cell, make_instance, make_pool, make_reef, make_region

# Written here, not read from the drivers: the config keys that name each provider's own host.
EXPECTED_HOST_KEYS = {
    "sqlite": set(),
    # Where the server is and how the hub signs in there: a top-up's new pool is a managed cluster of its own.
    "postgres": {"host", "port", "admin_user", "admin_database", "admin_password_env", "sslmode", "connect_timeout",
                 "version", "data_dir"},
    "azure_sql": {"elastic_pool"},
    "aws_rds": {"db_instance_identifier"},
    "local_fs": set(),
    "azure_files": {"account_name"},
    "aws_storage_gateway": {"gateway_arn", "activation_key", "gateway_instance_id", "security_group_id",
                            "gateway_dns_name", "gateway_private_ip"},
    "local_compute": set(),
    # The kubeconfig of a given cluster, the cluster the hub made, and the cluster's NAT address.
    "kubernetes": {"kubeconfig", "context", "eks_cluster", "eks_nodegroup", "aks_cluster", "cluster_endpoint",
                   "egress_address"},
}
# What each capability promises the driver implements.
CAPABILITY_METHODS = {
    "database_restore": (base.DatabaseDriver, "restore_database"),
    "backup_deletion": (None, "delete_backup"),
    "file_restore": (base.StorageDriver, "restore_share"),
    "host_replacement": (base.StorageDriver, "replace_pool"),
}
KIND_BASES = {"database": base.DatabaseDriver, "storage": base.StorageDriver, "compute": base.ComputeDriver}


def kind_base(cls):
    return next(b for b in cls.__mro__[1:] if b.__module__ == base.__name__)


def test_every_registered_driver_fills_in_the_whole_declaration_on_its_own_class():
    registered = drivers.registry()
    assert registered, "no driver registered"
    clouds = set(Cloud.values)
    for name, cls in registered.items():
        declared = vars(cls)
        missing = [attribute for attribute in base.DECLARATION if attribute not in declared]
        assert not missing, f"{cls.__name__} does not declare {missing}"
        assert cls.provider == name and cls.label.strip()
        assert cls.kind in PoolKind.values and issubclass(cls, KIND_BASES[cls.kind])
        assert cls.clouds and set(cls.clouds) <= clouds, cls
        assert set(cls.default_for_clouds) <= set(cls.clouds), cls
        assert isinstance(cls.lead_time_hours, int | float) and cls.lead_time_hours > 0, cls
        assert isinstance(cls.host_config_keys, tuple) and all(isinstance(k, str) for k in cls.host_config_keys)
        assert isinstance(cls.capabilities, base.Capabilities), cls


def test_the_registry_and_the_choices_of_the_kernel_agree():
    """cells imports nothing of ours, so its choices (and the database constraint built from them) are kept
    in step with the drivers by this test."""
    registered = drivers.registry()
    assert set(registered) == set(Provider.values)
    assert {name: cls.label for name, cls in registered.items()} == dict(Provider.choices)
    by_kind = {kind: {name for name, cls in registered.items() if cls.kind == kind} for kind in PoolKind.values}
    assert by_kind == {str(kind): {str(p) for p in providers} for kind, providers in PROVIDERS_BY_KIND.items()}


def test_every_cloud_has_one_default_provider_per_kind_and_a_dns_driver():
    defaults = drivers.capacity_defaults()["PROVIDER_BY_CLOUD"]
    for cloud in Cloud.values:
        assert set(defaults[cloud]) == set(PoolKind.values), cloud
        owners = [n for n, c in drivers.dns_registry().items() if cloud in c.default_for_clouds]
        assert len(owners) == 1, (cloud, owners)
    for kind in PoolKind.values:
        for cloud in Cloud.values:
            owners = [n for n, c in drivers.registry().items() if c.kind == kind and cloud in c.default_for_clouds]
            assert len(owners) == 1, (cloud, kind, owners)
    assert defaults["local"] == {"database": "sqlite", "storage": "local_fs", "compute": "local_compute"}
    assert defaults["aws"] == {"database": "aws_rds", "storage": "aws_storage_gateway", "compute": "kubernetes"}
    assert defaults["azure"] == {"database": "azure_sql", "storage": "azure_files", "compute": "kubernetes"}


def test_the_declared_host_keys_are_the_expected_ones():
    assert {name: set(cls.host_config_keys) for name, cls in drivers.registry().items()} == EXPECTED_HOST_KEYS


def test_a_driver_implements_exactly_what_its_capabilities_promise():
    for name, cls in drivers.registry().items():
        for capability, (owner, method) in CAPABILITY_METHODS.items():
            owner = owner or kind_base(cls)
            if not issubclass(cls, owner) or not hasattr(owner, method):
                assert not getattr(cls.capabilities, capability), (name, capability)
                continue
            implemented = getattr(cls, method) is not getattr(owner, method)
            assert implemented == getattr(cls.capabilities, capability), (name, capability)
        if cls.capabilities.database_switching:
            assert cls.capabilities.database_restore, name


def _shape(function):
    """A signature without annotations (some modules postpone theirs): names, kinds and defaults."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


def test_every_driver_keeps_its_base_class_signatures():
    classes = [*drivers.registry().values(), *drivers.dns_registry().values()]
    for cls in classes:
        contract = kind_base(cls)
        for name, member in inspect.getmembers(contract, inspect.isfunction):
            if name.startswith("_"):
                continue
            differs = f"{cls.__name__}.{name} differs from {contract.__name__}"
            assert _shape(getattr(cls, name)) == _shape(member), differs


def test_the_database_contract_takes_the_database_keyword_everywhere():
    """``database=`` is part of the contract of every database driver, not of two of them."""
    keyword_only = inspect.Parameter.KEYWORD_ONLY
    for method in ("credentials", "drop_database", "database_exists", "backup_database"):
        parameter = inspect.signature(getattr(base.DatabaseDriver, method)).parameters["database"]
        assert (parameter.kind, parameter.default) == (keyword_only, None), method
    restore = inspect.signature(base.DatabaseDriver.restore_database).parameters
    assert list(restore) == ["self", "instance", "point_in_time", "new_database", "source"]


def test_a_driver_that_cannot_switch_refuses_another_database():
    # Every registered database driver switches now: the kind's own rule is what a new one inherits.
    pool = Pool(pk=7, provider="aws_rds", kind="database", config={})
    driver = base.DatabaseDriver(pool)
    stand_in = Instance(pk=3)
    assert driver.own_database(stand_in, None) == driver.database_name(stand_in)
    with pytest.raises(drivers.PermanentDriverError, match="derived database"):
        driver.own_database(stand_in, "cellhub_i3_r9")


@pytest.mark.django_db
@pytest.mark.parametrize("provider", sorted(EXPECTED_HOST_KEYS))
def test_a_top_up_never_copies_a_host_key(provider):
    """For every provider: the reef's newest pool of the kind is the template; what names its host stays behind."""
    kind = drivers.driver_class(provider).kind
    cloud = next(c for c in ("local", "aws", "azure") if c in drivers.driver_class(provider).clouds)
    reef = make_reef(region=make_region(cloud=cloud, location="westus2" if cloud == "azure" else "us-east-1"))
    make_cell(reef)
    old = {key: f"old-{key}" for key in EXPECTED_HOST_KEYS[provider]}
    make_pool(reef, kind, capacity=10, provider=provider, status=PoolStatus.DRAINING,
              config={**old, "kept_setting": "kept"})
    Reef.objects.filter(pk=reef.pk).update(capacity_overrides={"FLOOR": {kind: 15}, "PROVIDER": {kind: provider}})
    operation_ids = capacity_top_up_pass()
    new = Pool.objects.get(operations__pk__in=operation_ids, kind=kind)
    assert new.provider == provider
    assert new.config["kept_setting"] == "kept"
    for key, value in old.items():
        assert new.config.get(key) != value, f"{provider}: top-up copied host key {key}"


@pytest.mark.django_db
def test_a_restore_the_provider_cannot_do_is_refused_as_not_supported_before_any_work(monkeypatch):
    # Every database provider restores now: take RDS's declaration away to see the services read it.
    monkeypatch.setattr(drivers.driver_class(Provider.AWS_RDS), "capabilities", Capabilities())
    database = make_pool(kind=PoolKind.DATABASE, provider=Provider.AWS_RDS)
    instance = make_instance(state=InstanceState.RUNNING, database_pool=database, reef=database.reef)
    with pytest.raises(NotSupported, match=r"AWS RDS") as refusal:
        instance_restore(instance=instance, point_in_time=timezone.now())
    assert refusal.value.code == NOT_SUPPORTED

    monkeypatch.setattr(drivers.driver_class(Provider.AWS_STORAGE_GATEWAY), "capabilities",
                        Capabilities(host_replacement=True))
    storage = make_pool(database.reef, PoolKind.STORAGE, capacity=2, provider=Provider.AWS_STORAGE_GATEWAY)
    share = storage.shares.first()
    share.instance, share.status = instance, "assigned"
    share.save(update_fields=["instance", "status"])
    backup = Backup.objects.create(instance=instance, kind=BackupKind.FILES, state=BackupState.SUCCEEDED,
                                   pool=storage, taken_at=timezone.now(), finished_at=timezone.now(),
                                   location="https://x/y")
    with pytest.raises(NotSupported, match=r"Storage Gateway") as refusal:
        instance_restore_files(instance=instance, backup=backup)
    assert refusal.value.code == NOT_SUPPORTED
    assert not Restore.objects.exists()


@pytest.mark.django_db
def test_a_pool_whose_provider_cannot_replace_its_host_is_refused_as_not_supported():
    pool = make_pool(kind=PoolKind.STORAGE, capacity=2, provider="azure_files")
    pool_mark_failed(pool=pool, reason="account deleted")
    with pytest.raises(NotSupported) as refusal:
        pool_replace(pool=pool)
    assert refusal.value.code == NOT_SUPPORTED
    assert not Pool.objects.filter(replaces=pool).exists()


@pytest.mark.django_db
def test_retention_leaves_the_backups_of_a_provider_that_keeps_its_own(monkeypatch):
    """A provider that declares no ``backup_deletion`` keeps its own: the pass neither calls it nor fails, and the
    record stays (RDS's declaration taken away for the test: its dumps in S3 are deleted by retention now)."""
    monkeypatch.setattr(drivers.driver_class(Provider.AWS_RDS), "capabilities", Capabilities())
    pool = make_pool(kind=PoolKind.DATABASE, provider=Provider.AWS_RDS)
    instance = make_instance(state=InstanceState.RUNNING, database_pool=pool, reef=pool.reef)
    past = timezone.now() - timedelta(days=60)
    old, new = (
        Backup.objects.create(instance=instance, kind=BackupKind.DATABASE, state=BackupState.SUCCEEDED, pool=pool,
                              taken_at=taken, finished_at=taken, expires_at=past,
                              location=f"arn:aws:rds:snapshot:{n}")
        for n, taken in enumerate((past, timezone.now()))
    )
    assert backups_expire() == 0
    old.refresh_from_db()
    assert old.state == BackupState.SUCCEEDED and old.deleted_at is None
