"""Instance logins on a PostgreSQL pool reach their own database only, and their passwords never reach the server
in plain text (the server gets a SCRAM-SHA-256 verifier)."""
import base64
import re
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from cells.choices import PoolKind, Provider
from provisioning import drivers
from provisioning.crypto import scram_sha256_verifier
from tests.conftest import ADMIN_DSN, RUN_PREFIX
from tests.factories import POSTGRES_POOL_CONFIG, make_instance, make_pool

pytestmark = pytest.mark.django_db
SERVER_LOG = Path("/var/log/postgresql/postgresql-15-main.log")


@pytest.fixture
def logged_admin():
    """A superuser of this run whose every statement the server logs (``log_statement = all``)."""
    name = f"{RUN_PREFIX}_logged_admin"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} SUPERUSER LOGIN").format(sql.Identifier(name)))
        admin.execute(sql.SQL("ALTER ROLE {} SET log_statement = 'all'").format(sql.Identifier(name)))
    return name


def _connect(credentials, database=None):
    return psycopg.connect(host=credentials.host, port=credentials.port, user=credentials.login,
                           password=credentials.password, dbname=database or credentials.database, connect_timeout=5)


def test_a_login_cannot_open_the_maintenance_databases_or_another_instances():
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:  # the server's default: the driver must close them
        for database in ("postgres", "template1"):
            admin.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO PUBLIC").format(sql.Identifier(database)))
    pool = make_pool(kind=PoolKind.DATABASE, provider=Provider.POSTGRES, config=POSTGRES_POOL_CONFIG)
    driver = drivers.for_pool(pool)
    a, b = make_instance(), make_instance()
    creds_a, creds_b = driver.create_database(instance=a), driver.create_database(instance=b)
    with _connect(creds_a) as own:
        assert own.execute("SELECT current_database()").fetchone()[0] == creds_a.database
    for database in ("postgres", "template1", creds_b.database):
        with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
            _connect(creds_a, database=database)


def test_the_verifier_is_postgresqls_own_computation():
    """PostgreSQL is the oracle: given its salt and iterations, we compute exactly the verifier it stores."""
    role = f"{RUN_PREFIX}_scram_oracle"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute("SET password_encryption = 'scram-sha-256'")
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role),
                                                                         sql.Literal("Ch0123abcd!9")))
        stored = admin.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", [role]).fetchone()[0]
    iterations, salt = re.match(r"^SCRAM-SHA-256\$(\d+):([^$]+)\$", stored).groups()
    assert scram_sha256_verifier("Ch0123abcd!9", salt=base64.b64decode(salt), iterations=int(iterations)) == stored


def test_role_statements_carry_a_verifier_never_the_password(logged_admin):
    config = {**POSTGRES_POOL_CONFIG, "admin_user": logged_admin}
    pool = make_pool(kind=PoolKind.DATABASE, provider=Provider.POSTGRES, config=config)
    driver = drivers.for_pool(pool)
    instance = make_instance()
    log_start = SERVER_LOG.stat().st_size if SERVER_LOG.exists() else 0
    credentials = driver.create_database(instance=instance)
    driver.create_database(instance=instance)  # the re-run: ALTER ROLE … PASSWORD
    with _connect(credentials) as own:  # the login works
        assert own.execute("SELECT current_user").fetchone()[0] == credentials.login
    with psycopg.connect(ADMIN_DSN) as admin:
        stored = admin.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s",
                               [credentials.login]).fetchone()[0]
    salt, iterations = re.match(r"^SCRAM-SHA-256\$(\d+):([^$]+)\$", stored).group(2, 1)
    assert scram_sha256_verifier(credentials.password, salt=base64.b64decode(salt),
                                 iterations=int(iterations)) == stored
    if not SERVER_LOG.exists():
        pytest.skip("the server log is not readable here")
    with SERVER_LOG.open("rb") as log:
        log.seek(log_start)
        logged = log.read().decode(errors="replace")
    role_lines = [line for line in logged.splitlines() if credentials.login in line and " ROLE " in line]
    assert any("CREATE ROLE" in line for line in role_lines) and any("ALTER ROLE" in line for line in role_lines)
    assert all("SCRAM-SHA-256$" in line for line in role_lines if "PASSWORD" in line)
    assert credentials.password not in logged
