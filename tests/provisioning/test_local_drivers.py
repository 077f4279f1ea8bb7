"""The local drivers do real work: databases and roles on PostgreSQL, files, manifests, a zone file."""
import sqlite3

import psycopg
import pytest
import yaml

from cells.choices import PoolKind, Provider
from provisioning import drivers
from provisioning.drivers.base import DeploymentSpec, PermanentDriverError, TransientDriverError
from provisioning.ports import instance_port_allocate
from tests.factories import POSTGRES_POOL_CONFIG, make_instance, make_pool, make_reef

pytestmark = pytest.mark.django_db


@pytest.fixture
def postgres_pool():
    return make_pool(kind=PoolKind.DATABASE, provider=Provider.POSTGRES, config=POSTGRES_POOL_CONFIG)


def _connect(credentials, database=None):
    return psycopg.connect(
        host=credentials.host, port=credentials.port, user=credentials.login, password=credentials.password,
        dbname=database or credentials.database, connect_timeout=5,
    )


def test_postgres_login_reaches_its_own_database_and_no_other(postgres_pool):
    driver = drivers.for_pool(postgres_pool)
    a, b = make_instance(), make_instance()
    creds_a, creds_b = driver.create_database(instance=a), driver.create_database(instance=b)

    with _connect(creds_a) as own:
        own.execute("CREATE TABLE notes (body text)")
        own.execute("INSERT INTO notes VALUES ('mine')")
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        _connect(creds_a, database=creds_b.database)
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        _connect(creds_b, database=creds_a.database)


def test_postgres_create_is_idempotent_and_drop_removes_database_and_role(postgres_pool):
    driver = drivers.for_pool(postgres_pool)
    instance = make_instance()
    first = driver.create_database(instance=instance)
    again = driver.create_database(instance=instance)
    assert first == again
    assert driver.database_exists(instance=instance) and driver.role_exists(instance=instance)
    assert driver.list_databases().count(first.database) == 1
    with _connect(first):  # the derived password works
        pass

    driver.drop_database(instance=instance)
    assert not driver.database_exists(instance=instance) and not driver.role_exists(instance=instance)
    driver.drop_database(instance=instance)  # absent is fine


def test_postgres_unreachable_server_is_transient_and_missing_password_env_permanent():
    instance = make_instance()
    down = make_pool(kind=PoolKind.DATABASE, provider=Provider.POSTGRES, config={"host": "127.0.0.1", "port": 1})
    with pytest.raises(TransientDriverError, match="not reachable"):
        drivers.for_pool(down).create_database(instance=instance)
    secretless = make_pool(
        kind=PoolKind.DATABASE, provider=Provider.POSTGRES,
        config={"admin_password_env": "CELLHUB_POOL_SECRET_NO_SUCH_VAR"},
    )
    with pytest.raises(PermanentDriverError, match="CELLHUB_POOL_SECRET_NO_SUCH_VAR"):
        drivers.for_pool(secretless).create_database(instance=instance)


def test_sqlite_database_is_a_file_of_its_own():
    driver = drivers.for_pool(make_pool(kind=PoolKind.DATABASE, provider=Provider.SQLITE))
    a, b = make_instance(), make_instance()
    creds = driver.create_database(instance=a)
    driver.create_database(instance=a)
    driver.create_database(instance=b)
    path = creds.url.removeprefix("sqlite:///")
    assert sqlite3.connect(path).execute("SELECT instance FROM cellhub_owner").fetchall() == [(a.name,)]
    assert len(driver.list_databases()) == 2
    driver.drop_database(instance=a)
    assert not driver.database_exists(instance=a) and driver.database_exists(instance=b)


def test_local_fs_share_folder_firewall_archive_and_scrub():
    pool = make_pool(kind=PoolKind.STORAGE, capacity=2)
    driver = drivers.for_pool(pool)
    first, second = pool.shares.order_by("slot")
    endpoint = driver.create_share(share=first)
    assert driver.create_share(share=first) == endpoint and driver.share_exists(share=first)
    driver.set_firewall(share=first, address="10.0.0.7")
    driver.set_firewall(share=second, address="10.0.0.8")
    driver.set_firewall(share=first, address="10.0.0.9")
    assert driver.exports() == {first.name: "10.0.0.9", second.name: "10.0.0.8"}

    folder = driver.share_path(first)
    (folder / "logs").mkdir()
    (folder / "logs" / "task.log").write_text("deployed")
    archive = driver.archive_share(share=first, label="test-archive")
    assert archive.size_bytes > 0 and len(archive.checksum) == 64
    driver.scrub_share(share=first)
    assert list(folder.iterdir()) == []
    driver.set_firewall(share=first, address="")
    assert first.name not in driver.exports()


def _spec(instance, namespace, port=None):
    return DeploymentSpec(
        name=instance.name, namespace=namespace, image="ghcr.io/cellhub/server", version="2026.4.1",
        cpu_millicores=750, memory_mib=1536, hostname=f"{instance.name}.cells.test",
        database_url="postgresql://login:secret@db:5432/x", share_endpoint="file:///srv/share", share_name="s",
        port=port,
    )


def test_local_compute_writes_the_kubernetes_manifests_beside_the_process():
    pool = make_pool(kind=PoolKind.COMPUTE)
    driver = drivers.for_pool(pool)
    instance = make_instance()
    driver.deploy(spec=_spec(instance, driver.namespace(instance), port=instance_port_allocate(instance=instance)))
    documents = list(yaml.safe_load_all(driver.manifest_path(instance).read_text()))
    kinds = [d["kind"] for d in documents]
    assert kinds == ["Namespace", "Secret", "Deployment", "Service", "Ingress"]
    secret, deployment = documents[1], documents[2]
    assert secret["stringData"]["DATABASE_URL"] == "postgresql://login:secret@db:5432/x"
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "ghcr.io/cellhub/server:2026.4.1"
    assert container["resources"]["limits"] == {"cpu": "750m", "memory": "1536Mi"}
    assert container["volumeMounts"] == [{"name": "share", "mountPath": "/data"}]
    assert deployment["spec"]["template"]["spec"]["volumes"][0]["hostPath"]["path"] == "/srv/share"

    driver.scale(instance=instance, replicas=0)
    driver.set_image(instance=instance, image="ghcr.io/cellhub/server:2026.5.0")
    status = driver.status(instance=instance)
    assert (status.exists, status.replicas, status.image) == (True, 0, "ghcr.io/cellhub/server:2026.5.0")
    assert driver.list_deployments() == [driver.namespace(instance)]
    driver.delete(instance=instance)
    assert not driver.status(instance=instance).exists


def test_local_dns_zone_file_has_one_record_per_instance():
    driver = drivers.for_dns(make_reef().region)
    driver.upsert_record(name="acme", address="127.0.0.2")
    driver.upsert_record(name="acme", address="127.0.0.2")
    driver.upsert_record(name="globex", address="lb.example.net")
    assert driver.list_records() == {"acme": "127.0.0.2", "globex": "lb.example.net"}
    text = driver.zone_file().read_text()
    assert text.count("acme ") == 1 and "globex 300 IN CNAME lb.example.net." in text
    driver.delete_record(name="acme")
    assert driver.lookup(name="acme") is None and driver.lookup(name="globex") == "lb.example.net"


def test_unknown_provider_is_a_permanent_error():
    pool = make_pool(kind=PoolKind.DATABASE)
    pool.provider = "oracle"
    with pytest.raises(PermanentDriverError, match="oracle"):
        drivers.for_pool(pool)


def test_secrets_come_from_the_environment_variable_the_config_names(monkeypatch):
    from provisioning.drivers.base import secret_from_environment

    pool = make_pool(kind=PoolKind.DATABASE, provider=Provider.AWS_RDS,
                     config={"master_password_env": "CELLHUB_POOL_SECRET_RDS_PW"})
    with pytest.raises(PermanentDriverError,
                       match="environment variable CELLHUB_POOL_SECRET_RDS_PW .the master password. is not set"):
        secret_from_environment(pool, "master_password_env", what="the master password")
    monkeypatch.setenv("CELLHUB_POOL_SECRET_RDS_PW", "s3cret")
    assert secret_from_environment(pool, "master_password_env", what="the master password") == "s3cret"
    with pytest.raises(PermanentDriverError, match="config is missing admin_password_env"):
        secret_from_environment(pool, "admin_password_env", what="x")
    assert secret_from_environment(pool, "admin_password_env", what="x", required=False) is None


@pytest.mark.parametrize("name", ["CELLHUB_BACKUP_KEY", "SECRET_KEY", "CELLHUB_POOL_SECRET_", "cellhub_pool_secret_x",
                                  "CELLHUB_POOL_SECRET_X Y"])
def test_a_secret_outside_the_allow_list_is_never_read(monkeypatch, name):
    """Even a config written around the validation (a raw update) cannot make a driver read the hub's secrets."""
    from cells.models import Pool
    from provisioning.drivers.base import secret_from_environment

    monkeypatch.setenv(name, "the hub's own secret")
    pool = make_pool(kind=PoolKind.DATABASE, provider=Provider.AWS_RDS)
    Pool.objects.filter(pk=pool.pk).update(config={"master_password_env": name})
    pool.refresh_from_db()
    with pytest.raises(PermanentDriverError, match="only variables starting with CELLHUB_POOL_SECRET_"):
        secret_from_environment(pool, "master_password_env", what="the master password")
