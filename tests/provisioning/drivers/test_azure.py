"""The Azure drivers (SQL, Files, DNS) through the real azure-mgmt clients and an injected transport.

``ArmTransport`` answers like Azure Resource Manager: nothing leaves the process. The assertions are on
what the SDKs put on the wire — methods, URLs, ``api-version`` and JSON bodies — and on long-running
operations being polled to completion.
"""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cells.choices import PoolKind
from provisioning.drivers.azure_dns import AzureDnsDriver
from provisioning.drivers.azure_files import AzureFilesStorageDriver
from provisioning.drivers.azure_sql import AzureSqlDatabaseDriver, contained_user_statements
from provisioning.drivers.base import PermanentDriverError, TransientDriverError, resource_prefix
from tests.factories import make_instance, make_pool, make_reef, make_region
from tests.provisioning.drivers.azure_transport import ArmTransport, FakeCredential, MissingCredential

SUB = "00000000-0000-0000-0000-000000000001"
SERVER_PATH = f"/subscriptions/{SUB}/resourceGroups/rg-cells/providers/Microsoft.Sql/servers/sql-west-1"
ACCOUNT_PATH = f"/subscriptions/{SUB}/resourceGroups/rg-cells/providers/Microsoft.Storage/storageAccounts/cellswest1"
SQL_CONFIG = {
    "subscription_id": SUB,
    "resource_group": "rg-cells",
    "server": "sql-west-1",
    "elastic_pool": "ep-1",
    "admin_password_env": "CELLHUB_POOL_SECRET_TEST_SQL_ADMIN",
    "hub_address": "203.0.113.10",
}
NOT_FOUND = {"error": {"code": "ResourceNotFound", "message": "not found"}}
FILES_CONFIG = {
    "subscription_id": SUB,
    "resource_group": "rg-cells",
    "account_name": "cellswest1",
    "share_quota_gib": 50,
    "hub_address": "203.0.113.10",
    "archive_account": "cellsdeep",
}


@pytest.fixture(autouse=True)
def _no_backoff(settings):
    settings.CELLHUB = {**settings.CELLHUB, "CLOUD_BACKOFF": 0}


@pytest.fixture
def transport():
    return ArmTransport()


@pytest.fixture
def reef(db):
    return make_reef(make_region(cloud="azure", location="westus2"))


def _sql(reef, transport, config=None, credential=None):
    pool = make_pool(reef, PoolKind.DATABASE, provider="azure_sql", config=config or SQL_CONFIG)
    return AzureSqlDatabaseDriver(
        pool, credential=credential or FakeCredential(), transport=transport, polling_interval=0
    )


def _lro_polls(transport):
    return [r for r in transport.requests if r.path.startswith("/test-operations/")]


# -- Azure SQL ------------------------------------------------------------------------------


def test_sql_provision_pool_creates_server_firewall_rule_and_elastic_pool(reef, transport, monkeypatch):
    monkeypatch.setenv("CELLHUB_POOL_SECRET_TEST_SQL_ADMIN", "Admin-Passw0rd!")
    transport.add("PUT", r"/servers/sql-west-1$", {"id": SERVER_PATH, "name": "sql-west-1", "location": "westus2",
                  "properties": {"fullyQualifiedDomainName": "sql-west-1.database.windows.net"}}, lro=True)
    transport.add("GET", r"/servers/sql-west-1$", {"id": SERVER_PATH, "name": "sql-west-1", "location": "westus2",
                  "properties": {"fullyQualifiedDomainName": "sql-west-1.database.windows.net"}})
    transport.add("PUT", rf"/firewallRules/{resource_prefix()}-hub$", {"name": "hub", "properties": {}})
    pool_body = {"id": f"{SERVER_PATH}/elasticPools/ep-1", "name": "ep-1", "location": "westus2"}
    transport.add("PUT", r"/elasticPools/ep-1$", pool_body, lro=True)
    transport.add("GET", r"/elasticPools/ep-1$", pool_body)

    result = _sql(reef, transport).provision_pool()

    assert result == {
        "external_id": f"{SERVER_PATH}/elasticPools/ep-1",
        "config": {"server_fqdn": "sql-west-1.database.windows.net"},
    }
    server, rule, elastic_pool = transport.calls("PUT")
    assert server.path == SERVER_PATH and server.query["api-version"]
    assert server.body == {
        "location": "westus2",
        "properties": {
            "administratorLogin": "cellhubadmin",
            "administratorLoginPassword": "Admin-Passw0rd!",
            "version": "12.0",
            "minimalTlsVersion": "1.2",
        },
    }
    assert rule.body == {"properties": {"startIpAddress": "203.0.113.10", "endIpAddress": "203.0.113.10"}}
    assert elastic_pool.body == {
        "location": "westus2",
        "sku": {"name": "StandardPool", "tier": "Standard", "capacity": 100},
    }
    assert len(_lro_polls(transport)) == 4  # each LRO: InProgress, then Succeeded


def test_sql_provision_pool_without_the_admin_password_names_the_variable(reef, transport, monkeypatch):
    monkeypatch.delenv("CELLHUB_POOL_SECRET_TEST_SQL_ADMIN", raising=False)
    with pytest.raises(PermanentDriverError, match="CELLHUB_POOL_SECRET_TEST_SQL_ADMIN"):
        _sql(reef, transport).provision_pool()
    assert transport.requests == []


class RecordingTds:
    """The DB-API boundary of python-tds: ``pytds.connect`` replaced by a recorder of its arguments and of every
    statement executed (the real library is imported; only its socket-opening entry point is stood in for)."""

    def __init__(self, fail=None):
        self.connections, self.statements, self.fail = [], [], fail

    def connect(self, **arguments):
        if self.fail is not None:
            raise self.fail
        self.connections.append(arguments)
        recorder = self

        class Cursor:
            def __enter__(self):
                return self

            def __exit__(self, *args):
                return False

            def execute(self, statement, params=None):
                recorder.statements.append((arguments["database"], statement))

        class Connection:
            def __enter__(self):
                return self

            def __exit__(self, *args):
                return False

            def cursor(self):
                return Cursor()

        return Connection()


@pytest.fixture
def tds(monkeypatch):
    import pytds

    recorder = RecordingTds()
    monkeypatch.setattr(pytds, "connect", recorder.connect)
    return recorder


DATABASE_ID = "6f1a0a52-0000-4000-8000-00000000000a"


def _database_body(name, **properties):
    return {"id": f"{SERVER_PATH}/databases/{name}", "name": name, "location": "westus2",
            "properties": {"databaseId": DATABASE_ID, "earliestRestoreDate": "2026-02-01T00:00:00Z", **properties}}


def _restore_point(database):
    return f"{SERVER_PATH}/databases/{database}?restorePointInTime=2026-03-01T12:00:00+00:00&databaseId={DATABASE_ID}"


def _retention_routes(transport):
    policy = {"name": "default", "properties": {"retentionDays": 7}}
    transport.add("PUT", r"/backupShortTermRetentionPolicies/default$", policy, lro=202)
    transport.add("GET", r"/backupShortTermRetentionPolicies/default$", policy)


def test_sql_create_database_in_the_elastic_pool_with_its_window_then_the_contained_user_over_tds(
    reef, transport, tds, monkeypatch, settings
):
    monkeypatch.setenv("CELLHUB_POOL_SECRET_TEST_SQL_ADMIN", "Admin-Passw0rd!")
    driver = _sql(reef, transport)
    instance = make_instance()
    database = driver.database_name(instance)
    body = _database_body(database)
    transport.add("PUT", rf"/databases/{database}$", body, lro=True)
    transport.add("GET", rf"/databases/{database}$", body)
    _retention_routes(transport)

    credentials = driver.create_database(instance=instance)

    put, retention = transport.calls("PUT")
    assert put.path == f"{SERVER_PATH}/databases/{database}"
    assert put.query["api-version"] == ["2025-01-01"]
    assert put.body["properties"]["elasticPoolId"] == f"{SERVER_PATH}/elasticPools/ep-1"
    assert put.body["location"] == "westus2"
    assert transport.calls("GET", rf"/databases/{database}$"), "the LRO was followed to the final resource"
    assert retention.path == f"{SERVER_PATH}/databases/{database}/backupShortTermRetentionPolicies/default"
    # The hub's BACKUP_RETENTION_DAYS, within Azure's 1-35.
    assert retention.body == {"properties": {"retentionDays": min(35, settings.CELLHUB["BACKUP_RETENTION_DAYS"])}}
    (arguments,) = tds.connections
    assert arguments["server"] == "sql-west-1.database.windows.net" and arguments["port"] == 1433
    assert arguments["database"] == database  # the statements run inside the instance's database only
    assert arguments["user"] == "cellhubadmin" and arguments["password"] == "Admin-Passw0rd!"
    assert arguments["cafile"] and arguments["validate_host"] is True  # TLS verified: Azure refuses plain TDS
    login, password = driver.login_name(instance), driver.password(instance)
    assert [statement for _, statement in tds.statements] == [
        f"IF NOT EXISTS (SELECT 1 FROM sys.database_principals WHERE name = N'{login}')\n"
        f"    CREATE USER [{login}] WITH PASSWORD = N'{password}';\n"
        "ELSE\n"
        f"    ALTER USER [{login}] WITH PASSWORD = N'{password}';",
        f"ALTER ROLE db_datareader ADD MEMBER [{login}];",
        f"ALTER ROLE db_datawriter ADD MEMBER [{login}];",
        f"ALTER ROLE db_ddladmin ADD MEMBER [{login}];",
    ]
    sent = " ".join(statement for _, statement in tds.statements).upper()
    for server_level in ("CREATE LOGIN", "SERVER ROLE", "GRANT", "DB_OWNER", "MASTER"):
        assert server_level not in sent
    assert credentials.login == login and credentials.database == database


def test_sql_contained_user_signs_in_with_an_entra_token_when_configured(reef, transport, tds):
    config = {key: value for key, value in SQL_CONFIG.items() if key != "admin_password_env"}
    driver = _sql(reef, transport, config={**config, "tsql_auth": "aad"})
    driver.run_tsql(database="db1", statements=["SELECT 1"])
    (arguments,) = tds.connections
    assert "password" not in arguments and "user" not in arguments
    assert arguments["access_token_callable"]() == "test-token"  # FakeCredential's token for database.windows.net


def test_sql_unreachable_server_is_transient_and_a_refused_statement_permanent(reef, transport, monkeypatch):
    import pytds

    monkeypatch.setenv("CELLHUB_POOL_SECRET_TEST_SQL_ADMIN", "x")
    driver = _sql(reef, transport)
    monkeypatch.setattr(pytds, "connect", RecordingTds(fail=pytds.OperationalError("timed out")).connect)
    with pytest.raises(TransientDriverError, match="cannot connect"):
        driver.run_tsql(database="db1", statements=["SELECT 1"])
    monkeypatch.setattr(pytds, "connect", RecordingTds(fail=pytds.ProgrammingError("denied")).connect)
    with pytest.raises(PermanentDriverError, match="T-SQL failed"):
        driver.run_tsql(database="db1", statements=["SELECT 1"])


def test_contained_user_statements_create_or_realign_the_user_and_quote():
    statements = contained_user_statements(login="cellhub_i7_login", password="Ch'pw]!9")
    assert statements[0] == (
        "IF NOT EXISTS (SELECT 1 FROM sys.database_principals WHERE name = N'cellhub_i7_login')\n"
        "    CREATE USER [cellhub_i7_login] WITH PASSWORD = N'Ch''pw]!9';\n"
        "ELSE\n"
        "    ALTER USER [cellhub_i7_login] WITH PASSWORD = N'Ch''pw]!9';"
    )
    assert contained_user_statements(login="a]b", password="x")[1] == "ALTER ROLE db_datareader ADD MEMBER [a]]b];"


def test_sql_restore_creates_a_new_database_by_point_in_time_from_the_restore_point(reef, transport, tds, monkeypatch):
    monkeypatch.setenv("CELLHUB_POOL_SECRET_TEST_SQL_ADMIN", "x")
    driver = _sql(reef, transport)
    instance = make_instance()
    source = driver.database_name(instance)
    new = f"{source}_r9"
    transport.add("GET", rf"/databases/{source}$", _database_body(source))
    body = _database_body(new)
    transport.add("PUT", rf"/databases/{new}$", body, lro=True)
    transport.add("GET", rf"/databases/{new}$", sequence=[(404, NOT_FOUND), (200, body)])
    _retention_routes(transport)
    point = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)
    restore_point = _restore_point(source)

    restored = driver.restore_database(instance=instance, point_in_time=point, new_database=new, source=restore_point)
    assert restored == new

    put = transport.calls("PUT", rf"/databases/{new}$")[0]
    assert put.path == f"{SERVER_PATH}/databases/{new}"
    assert put.body["properties"] == {
        "createMode": "PointInTimeRestore",
        "sourceDatabaseId": f"{SERVER_PATH}/databases/{source}",
        "restorePointInTime": "2026-03-01T12:30:00Z",
        "elasticPoolId": f"{SERVER_PATH}/elasticPools/ep-1",
    }
    assert _lro_polls(transport), "the restore was polled to completion"
    assert {database for database, _ in tds.statements} == {new}  # the same contained user, in the new database

    # A repeat finds the restored database and sends no second restore.
    restored = driver.restore_database(instance=instance, point_in_time=point, new_database=new, source=restore_point)
    assert restored == new
    assert len(transport.calls("PUT", rf"/databases/{new}$")) == 1


def test_sql_restore_refuses_a_point_whose_database_was_replaced_before_creating_anything(reef, transport, tds):
    driver = _sql(reef, transport)
    instance = make_instance()
    source = driver.database_name(instance)
    transport.add("GET", rf"/databases/{source}$", _database_body(source, databaseId="another-incarnation"))
    restore_point = _restore_point(source)
    with pytest.raises(PermanentDriverError, match="no longer the one the restore point was recorded for"):
        driver.restore_database(instance=instance, point_in_time=datetime(2026, 3, 1, 12, 30, tzinfo=UTC),
                                new_database=f"{source}_r1", source=restore_point)
    with pytest.raises(PermanentDriverError, match="before the earliest restorable"):
        transport.add("GET", rf"/databases/{source}$", _database_body(source))
        driver.restore_database(instance=instance, point_in_time=datetime(2026, 1, 1, tzinfo=UTC),
                                new_database=f"{source}_r1", source=restore_point)
    assert transport.calls("PUT") == [] and tds.statements == []


def test_sql_restore_refuses_to_overwrite_the_source(reef, transport):
    driver = _sql(reef, transport)
    instance = make_instance()
    with pytest.raises(PermanentDriverError, match="new database"):
        driver.restore_database(
            instance=instance, point_in_time=datetime.now(UTC), new_database=driver.database_name(instance)
        )
    with pytest.raises(PermanentDriverError, match="not one of instance"):
        driver.restore_database(instance=instance, point_in_time=datetime.now(UTC), new_database="someone_else")
    assert transport.calls("PUT") == []


def test_sql_backup_is_a_restore_point_of_the_database_identity_with_long_term_retention(reef, transport):
    retention = {"weeklyRetention": "P4W", "monthlyRetention": "P12M", "yearlyRetention": "P5Y", "weekOfYear": 1}
    driver = _sql(reef, transport, config={**SQL_CONFIG, "long_term_retention": retention})
    instance = make_instance()
    database = driver.database_name(instance)
    transport.add("GET", rf"/servers/sql-west-1/databases/{database}$", _database_body(database))
    _retention_routes(transport)
    policy = {"id": f"{SERVER_PATH}/databases/{database}/backupLongTermRetentionPolicies/default",
              "name": "default", "properties": retention}
    transport.add("PUT", r"/backupLongTermRetentionPolicies/default$", policy, lro=202)
    transport.add("GET", r"/backupLongTermRetentionPolicies/default$", policy)

    before = datetime.now(UTC).replace(microsecond=0)
    result = driver.backup_database(instance=instance, label="final")

    short, long = transport.calls("PUT")
    assert short.path.endswith(f"/databases/{database}/backupShortTermRetentionPolicies/default")
    assert long.path == f"{SERVER_PATH}/databases/{database}/backupLongTermRetentionPolicies/default"
    assert long.body == {"properties": retention}
    assert result.location.startswith(f"{SERVER_PATH}/databases/{database}?restorePointInTime=")
    assert result.location.endswith(f"&databaseId={DATABASE_ID}")
    assert result.checksum == DATABASE_ID
    assert datetime.fromisoformat(result.extra["taken_at"]) >= before
    assert result.extra["earliest_restore_date"].startswith("2026-02-01")
    # Deleting a restore point calls nothing: Azure's retention owns the backups behind it.
    calls = len(transport.requests)
    driver.delete_backup(location=result.location)
    assert len(transport.requests) == calls
    with pytest.raises(PermanentDriverError):
        driver.delete_backup(location="file:///tmp/x.dump")


def test_sql_restorable_window_is_azures(reef, transport):
    driver = _sql(reef, transport)
    instance = make_instance()
    database = driver.database_name(instance)
    transport.add("GET", rf"/databases/{database}$", _database_body(database))
    start, end = driver.point_in_time_window(instance=instance)
    assert start == datetime(2026, 2, 1, tzinfo=UTC)
    assert timedelta(minutes=9) < datetime.now(UTC) - end < timedelta(minutes=11)


def test_sql_drop_database_and_absent_is_fine(reef, transport):
    driver = _sql(reef, transport)
    instance = make_instance()
    database = driver.database_name(instance)
    transport.add("DELETE", rf"/databases/{database}$", lro=True)
    driver.drop_database(instance=instance)
    assert [r.method for r in transport.calls(path_regex=rf"/databases/{database}$")] == ["DELETE"]
    assert len(_lro_polls(transport)) == 2

    transport.add("DELETE", rf"/databases/{database}$", status=404,
                  body={"error": {"code": "ResourceNotFound", "message": "gone"}})
    driver.drop_database(instance=instance)  # no error


def test_sql_lists_and_checks_databases(reef, transport):
    driver = _sql(reef, transport)
    instance = make_instance()
    database = driver.database_name(instance)
    transport.add("GET", r"/elasticPools/ep-1/databases$", {"value": [
        {"name": database, "location": "westus2"}, {"name": "someone_elses", "location": "westus2"}]})
    assert driver.list_databases() == [database]
    assert driver.database_exists(instance=instance) is False
    transport.add("GET", rf"/databases/{database}$", {"name": database, "location": "westus2"})
    assert driver.database_exists(instance=instance) is True


def test_sql_throttled_twice_then_created_once(reef, transport, tds, monkeypatch):
    monkeypatch.setenv("CELLHUB_POOL_SECRET_TEST_SQL_ADMIN", "x")
    driver = _sql(reef, transport)
    instance = make_instance()
    database = driver.database_name(instance)
    body = {"id": f"{SERVER_PATH}/databases/{database}", "name": database, "location": "westus2"}
    route = transport.add("PUT", rf"/databases/{database}$", body, lro=True, throttle=2)
    transport.add("GET", rf"/databases/{database}$", body)

    _retention_routes(transport)
    driver.create_database(instance=instance)

    assert route.times_called == 3  # two 429s, then the accepted PUT
    assert len(_lro_polls(transport)) == 4  # the database and its retention policy, each polled once


def test_sql_throttled_without_end_is_transient(reef, transport):
    driver = _sql(reef, transport)
    transport.add("GET", r"/databases/", throttle=100)
    with pytest.raises(TransientDriverError, match="after 5 attempts"):
        driver.database_exists(instance=make_instance())
    assert len(transport.requests) == 5


def test_sql_missing_subscription_is_permanent_and_named(reef, transport):
    config = {key: value for key, value in SQL_CONFIG.items() if key not in ("subscription_id", "elastic_pool")}
    with pytest.raises(PermanentDriverError, match="missing subscription_id, elastic_pool"):
        _sql(reef, transport, config=config).database_exists(instance=make_instance())
    assert transport.requests == []


def test_sql_missing_credentials_is_permanent_and_says_what_to_set(reef, transport):
    driver = _sql(reef, transport, credential=MissingCredential())
    with pytest.raises(PermanentDriverError, match="Azure credentials not found: set AZURE_TENANT_ID"):
        driver.database_exists(instance=make_instance())


# -- Azure Files ----------------------------------------------------------------------------


def _files(reef, transport, config=None, capacity=3):
    pool = make_pool(reef, PoolKind.STORAGE, provider="azure_files", capacity=capacity, config=config or FILES_CONFIG)
    return AzureFilesStorageDriver(pool, credential=FakeCredential(), transport=transport, polling_interval=0)


def test_files_provision_pool_creates_a_default_deny_account_once(reef, transport):
    driver = _files(reef, transport)
    account = {"id": ACCOUNT_PATH, "name": "cellswest1", "location": "westus2", "kind": "StorageV2",
               "sku": {"name": "Standard_LRS"}, "properties": {}}
    transport.add("GET", r"/storageAccounts/cellswest1$", sequence=[(404, NOT_FOUND), (200, account)])
    transport.add("PUT", r"/storageAccounts/cellswest1$", account, lro=202)

    assert driver.provision_pool() == {"external_id": ACCOUNT_PATH, "config": {}}

    (put,) = transport.calls("PUT")
    assert put.path == ACCOUNT_PATH and put.query["api-version"]
    assert put.body["kind"] == "StorageV2" and put.body["sku"] == {"name": "Standard_LRS"}
    assert put.body["properties"]["networkAcls"] == {
        "defaultAction": "Deny",
        "bypass": "AzureServices",
        "ipRules": [{"value": "203.0.113.10", "action": "Allow"}],
    }
    assert put.body["properties"]["supportsHttpsTrafficOnly"] is True
    assert put.body["properties"]["allowBlobPublicAccess"] is False
    assert _lro_polls(transport)

    # A repeat finds the account and leaves it (and its firewall) alone.
    assert driver.provision_pool()["external_id"] == ACCOUNT_PATH
    assert len(transport.calls("PUT")) == 1


def test_files_create_share_with_quota_then_find_it(reef, transport):
    driver = _files(reef, transport)
    share = driver.pool.shares.get(slot=1)
    share_path = f"{ACCOUNT_PATH}/fileServices/default/shares/{share.name}"
    transport.add("GET", rf"/shares/{share.name}$", status=404,
                  body={"error": {"code": "ShareNotFound", "message": "no"}})
    transport.add("PUT", rf"/shares/{share.name}$", {"name": share.name, "properties": {"shareQuota": 50}})

    endpoint = driver.create_share(share=share)

    assert endpoint == f"azurefile://cellswest1.file.core.windows.net/{share.name}"
    (put,) = transport.calls("PUT")
    assert put.path == share_path and put.query["api-version"]
    assert put.body == {"properties": {"shareQuota": 50, "enabledProtocols": "SMB"}}

    transport.add("GET", rf"/shares/{share.name}$", {"name": share.name, "properties": {"shareQuota": 50}})
    assert driver.create_share(share=share) == endpoint
    assert len(transport.calls("PUT")) == 1


def test_files_firewall_adds_and_removes_only_the_hubs_addresses_and_keeps_operators_rules(reef, transport):
    driver = _files(reef, transport)
    other = driver.pool.shares.get(slot=0)
    other.firewall_address = "198.51.100.7"
    other.save(update_fields=["firewall_address"])
    share = driver.pool.shares.get(slot=2)
    share.firewall_address = "198.51.100.41"  # its previous address, to be replaced
    subnet = f"/subscriptions/{SUB}/resourceGroups/net/providers/Microsoft.Network/virtualNetworks/ops/subnets/admin"
    transport.add("GET", r"/storageAccounts/cellswest1$", {
        "id": ACCOUNT_PATH, "name": "cellswest1", "location": "westus2", "properties": {"networkAcls": {
            "defaultAction": "Deny", "bypass": "AzureServices, Logging",
            "ipRules": [{"value": "192.0.2.0/24", "action": "Allow"}, {"value": "198.51.100.41", "action": "Allow"},
                        {"value": "198.51.100.7", "action": "Allow"}],
            "virtualNetworkRules": [{"id": subnet, "action": "Allow"}],
        }}})
    transport.add("PATCH", r"/storageAccounts/cellswest1$", {"id": ACCOUNT_PATH, "name": "cellswest1"})

    driver.set_firewall(share=share, address="198.51.100.42")

    (patch,) = transport.calls("PATCH")
    assert patch.path == ACCOUNT_PATH
    assert patch.body == {
        "properties": {
            "networkAcls": {
                "defaultAction": "Deny",
                "bypass": "AzureServices, Logging",  # the operators' bypass kept
                "ipRules": [
                    {"value": "192.0.2.0/24", "action": "Allow"},  # an operator's rule kept
                    {"value": "198.51.100.42", "action": "Allow"},  # the share's new address
                    {"value": "198.51.100.7", "action": "Allow"},  # another share's
                    {"value": "203.0.113.10", "action": "Allow"},  # the hub
                ],  # the share's previous address (198.51.100.41) is gone
                "virtualNetworkRules": [{"id": subnet, "action": "Allow"}],  # kept
            }
        }
    }


def test_files_scrub_deletes_and_recreates_with_the_same_quota(reef, transport):
    driver = _files(reef, transport)
    share = driver.pool.shares.get(slot=0)
    transport.add("GET", rf"/shares/{share.name}$", {"name": share.name, "properties": {"shareQuota": 200}})
    transport.add("DELETE", rf"/shares/{share.name}$", status=200)
    transport.add("PUT", rf"/shares/{share.name}$", {"name": share.name, "properties": {"shareQuota": 200}})

    driver.scrub_share(share=share)

    assert [r.method for r in transport.calls(path_regex=rf"/shares/{share.name}$")] == ["GET", "DELETE", "PUT"]
    delete = transport.calls("DELETE")[0]
    assert delete.query["$include"] == ["snapshots"]
    assert transport.calls("PUT")[0].body == {"properties": {"shareQuota": 200, "enabledProtocols": "SMB"}}


def test_files_scrub_while_azure_still_deletes_is_transient(reef, transport):
    driver = _files(reef, transport)
    share = driver.pool.shares.get(slot=0)
    transport.add("GET", rf"/shares/{share.name}$", status=404, body={"error": {"code": "ShareNotFound"}})
    transport.add("DELETE", rf"/shares/{share.name}$", status=200)
    transport.add("PUT", rf"/shares/{share.name}$", status=409,
                  body={"error": {"code": "ShareBeingDeleted", "message": "The specified share is being deleted."}})
    with pytest.raises(TransientDriverError, match="still being deleted"):
        driver.scrub_share(share=share)


def test_files_throttled_twice_then_one_share(reef, transport):
    driver = _files(reef, transport)
    share = driver.pool.shares.get(slot=0)
    transport.add("GET", rf"/shares/{share.name}$", status=404, body={"error": {"code": "ShareNotFound"}})
    route = transport.add("PUT", rf"/shares/{share.name}$", {"name": share.name}, throttle=2)
    driver.create_share(share=share)
    assert route.times_called == 3
    assert [r.method for r in transport.requests].count("PUT") == 3


def test_files_missing_account_is_named(reef, transport):
    config = {k: v for k, v in FILES_CONFIG.items() if k != "account_name"}
    with pytest.raises(PermanentDriverError, match="missing account_name"):
        _files(reef, transport, config=config).list_shares()


# -- Azure DNS ------------------------------------------------------------------------------

ZONE_PATH = f"/subscriptions/{SUB}/resourceGroups/rg-dns/providers/Microsoft.Network/dnsZones/cells.example.com"


@pytest.fixture
def dns_env(monkeypatch):
    monkeypatch.setenv("AZURE_SUBSCRIPTION_ID", SUB)
    monkeypatch.setenv("CELLHUB_AZURE_DNS_RESOURCE_GROUP", "rg-dns")
    monkeypatch.delenv("CELLHUB_AZURE_DNS_ZONE", raising=False)


def _dns(reef, transport):
    return AzureDnsDriver(reef.region, "cells.example.com", credential=FakeCredential(), transport=transport)


def test_dns_upsert_a_record(reef, transport, dns_env):
    transport.add("PUT", r"/A/acme$", {"name": "acme", "type": "Microsoft.Network/dnszones/A",
                                       "properties": {"TTL": 300, "ARecords": [{"ipv4Address": "203.0.113.5"}]}})
    _dns(reef, transport).upsert_record(name="acme", address="203.0.113.5")

    (put,) = transport.calls("PUT")
    assert put.path == f"{ZONE_PATH}/A/acme" and put.query["api-version"]
    assert put.body == {"properties": {"TTL": 300, "ARecords": [{"ipv4Address": "203.0.113.5"}]}}
    assert {r.path for r in transport.calls("GET")} == {f"{ZONE_PATH}/AAAA/acme", f"{ZONE_PATH}/CNAME/acme"}


def test_dns_hostname_replaces_the_a_record_with_a_cname(reef, transport, dns_env):
    transport.add("GET", r"/A/acme$", {"name": "acme", "properties": {"ARecords": [{"ipv4Address": "203.0.113.5"}]}})
    transport.add("DELETE", r"/A/acme$", status=200)
    transport.add("PUT", r"/CNAME/acme$", {"name": "acme", "properties": {"CNAMERecord": {"cname": "lb.example.net"}}})

    _dns(reef, transport).upsert_record(name="acme", address="lb.example.net")

    assert [r.path for r in transport.calls("DELETE")] == [f"{ZONE_PATH}/A/acme"]
    (put,) = transport.calls("PUT")
    assert put.path == f"{ZONE_PATH}/CNAME/acme"
    assert put.body == {"properties": {"TTL": 300, "CNAMERecord": {"cname": "lb.example.net"}}}


def test_dns_lookup_list_and_delete(reef, transport, dns_env):
    transport.add("GET", r"/A/acme$", {"name": "acme", "properties": {"ARecords": [{"ipv4Address": "203.0.113.5"}]}})
    transport.add("GET", r"/recordsets$", {"value": [
        {"name": "acme", "type": "Microsoft.Network/dnszones/A",
         "properties": {"ARecords": [{"ipv4Address": "203.0.113.5"}]}},
        {"name": "beta", "type": "Microsoft.Network/dnszones/CNAME",
         "properties": {"CNAMERecord": {"cname": "lb.example.net"}}},
        {"name": "@", "type": "Microsoft.Network/dnszones/NS", "properties": {}},
    ]})
    transport.add("DELETE", r"/(A|AAAA|CNAME)/acme$", status=200)
    driver = _dns(reef, transport)

    assert driver.lookup(name="acme") == "203.0.113.5"
    assert driver.lookup(name="nobody") is None
    assert driver.list_records() == {"acme": "203.0.113.5", "beta": "lb.example.net"}
    driver.delete_record(name="acme")
    assert sorted(r.path.rsplit("/", 2)[1] for r in transport.calls("DELETE")) == ["A", "AAAA", "CNAME"]


def test_dns_without_subscription_names_the_variables(reef, transport, monkeypatch):
    monkeypatch.delenv("AZURE_SUBSCRIPTION_ID", raising=False)
    monkeypatch.delenv("CELLHUB_AZURE_DNS_RESOURCE_GROUP", raising=False)
    with pytest.raises(PermanentDriverError, match="AZURE_SUBSCRIPTION_ID and CELLHUB_AZURE_DNS_RESOURCE_GROUP"):
        _dns(reef, transport).upsert_record(name="acme", address="203.0.113.5")
    assert transport.requests == []
