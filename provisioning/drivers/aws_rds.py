"""AWS RDS for PostgreSQL as a database pool: one RDS instance; one database and login role per instance.

Pool config (no secrets):

- ``master_password_env``: the name of the ``CELLHUB_POOL_SECRET_…`` variable holding the master password (required);
- ``db_instance_identifier`` (default ``<prefix>-p<pool id>``), ``master_username`` (default ``cellhub_admin``);
- ``instance_class`` (default ``db.t4g.medium``), ``allocated_storage_gib`` (default 100),
  ``engine_version`` (default: RDS's), ``backup_retention_days`` (default 7), ``multi_az`` (default false),
  ``kms_key_id`` (default: the RDS service key), ``db_subnet_group``, ``vpc_security_group_ids``;
- ``sslmode`` for the hub's SQL connection (default ``require``).

The instance is created with deletion protection, encrypted storage and automated backups. RDS has no
API for a database *inside* an instance, so the database and its login are made over SQL (psycopg) with
the same statements as a local PostgreSQL server (``provisioning.drivers.postgres``).

Point-in-time restore: RDS recovers whole instances, so the pool's instance is recovered at T into a temporary
RDS instance, the one database is dumped from it and loaded into a NEW database of the pool (``pg_tools``, the
same client programs the PostgreSQL driver runs), the instance is switched to it, and the temporary instance
is deleted. On-demand backups are per-database ``pg_dump`` files in S3 (``backup_bucket``; SSE-KMS with
``kms_key_id``), never manual snapshots of the shared instance (whose quota a fleet would exhaust).

More config: ``backup_bucket`` (required for backups), ``restore_instance_class`` (the temporary instance's
class; default ``instance_class``), ``waiter_delay_seconds`` (30) and ``waiter_max_attempts`` (60) of the
waits, ``bin_dir`` (where pg_dump/pg_restore are).
"""
from __future__ import annotations

import hashlib
import re
import tempfile
import time
from datetime import datetime, timedelta
from urllib.parse import parse_qs, urlparse

import psycopg
from botocore.exceptions import WaiterError
from psycopg import errors, sql

from provisioning.drivers.aws_s3 import s3_object_sha256
from provisioning.drivers.base import (
    BackupResult,
    Capabilities,
    DatabaseCredentials,
    DatabaseDriver,
    PermanentDriverError,
    TransientDriverError,
    resource_name,
    resource_prefix,
    secret_from_environment,
)
from provisioning.drivers.cloud_retry import CloudConflictError, CloudNotFoundError, aws_client, cloud_call
from provisioning.drivers.pg_tools import pg_dump_to, pg_restore_from
from provisioning.drivers.postgres import (
    RESTORED_COMMENT,
    RESTORING_COMMENT,
    isolation_statements,
    provision_role_and_database,
)

GIB = 1 << 30


def rds_identifier(text: str, *, max_length: int = 63) -> str:
    """An RDS identifier made from ``text``: lowercase letters, digits and single hyphens, starting with a letter."""
    identifier = re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9]", "-", text.lower())).strip("-")
    if not identifier or not identifier[0].isalpha():
        identifier = f"c-{identifier}".rstrip("-")
    return identifier[:max_length].rstrip("-")


def _run_sql(connect_kwargs: dict, work):
    """Run ``work(cursor)`` on an autocommit admin connection, sorting PostgreSQL errors into driver errors."""
    try:
        with psycopg.connect(autocommit=True, **connect_kwargs) as connection, connection.cursor() as cursor:
            return work(cursor)
    except (psycopg.OperationalError, errors.LockNotAvailable, errors.ObjectInUse) as error:
        raise TransientDriverError(f"PostgreSQL at {connect_kwargs.get('host')}: {error}") from error
    except psycopg.Error as error:
        raise PermanentDriverError(f"PostgreSQL at {connect_kwargs.get('host')}: {error}") from error


def ensure_instance_database(connect_kwargs: dict, *, database: str, login: str, password: str) -> None:
    """Create (or find) the login role and the database it owns; re-apply the password and the isolation grants.

    Works for a master user that is not a superuser (RDS): it grants itself membership of the new role
    first, which PostgreSQL 16 requires to create a database owned by that role.
    """

    def work(cursor):
        provision_role_and_database(cursor, database=database, login=login, password=password, admin_joins_role=True)

    _run_sql(connect_kwargs, work)


def drop_instance_database(connect_kwargs: dict, *, database: str, login: str) -> None:
    """Drop the database (closing its sessions) and its login role; absent is fine."""

    def work(cursor):
        cursor.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
        cursor.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(login)))

    _run_sql(connect_kwargs, work)


class RdsDatabaseDriver(DatabaseDriver):
    """Databases on one RDS for PostgreSQL instance; AWS calls through ``cloud_call``, SQL through psycopg."""

    provider = "aws_rds"
    label = "AWS RDS"
    clouds = ("aws",)
    default_for_clouds = ("aws",)
    lead_time_hours = 1.0
    host_config_keys = ("db_instance_identifier",)
    # RDS recovers the whole server to any second (into a temporary instance the driver extracts one database
    # from); an instance is switched to the restored database; on-demand backups are per-database dumps in S3.
    capabilities = Capabilities(point_in_time_restore=True, database_restore=True, database_switching=True,
                                backup_deletion=True)

    def __init__(self, pool):
        super().__init__(pool)
        self._clients: dict = {}

    def _client(self, service: str):
        """The boto3 client of ``service`` in the pool's region, created on first use."""
        if service not in self._clients:
            self._clients[service] = aws_client(service, self.pool.reef.region.location)
        return self._clients[service]

    @property
    def identifier(self) -> str:
        return self.config.get("db_instance_identifier") or rds_identifier(resource_name("p", self.pool.pk))

    def _master_username(self) -> str:
        return self.config.get("master_username", "cellhub_admin")

    def _master_password(self) -> str:
        return secret_from_environment(self.pool, "master_password_env", what="the RDS master password")

    def describe(self, identifier: str | None = None) -> dict | None:
        """The RDS instance's description, or ``None`` when it does not exist."""
        identifier = identifier or self.identifier
        try:
            response = cloud_call(
                f"describe RDS instance {identifier}",
                lambda: self._client("rds").describe_db_instances(DBInstanceIdentifier=identifier),
                not_found=("DBInstanceNotFound", "DBInstanceNotFoundFault"),
            )
        except CloudNotFoundError:
            return None
        return response["DBInstances"][0]

    def _network(self) -> dict:
        params = {}
        if self.config.get("db_subnet_group"):
            params["DBSubnetGroupName"] = self.config["db_subnet_group"]
        if self.config.get("vpc_security_group_ids"):
            params["VpcSecurityGroupIds"] = list(self.config["vpc_security_group_ids"])
        return params

    def _tags(self, **extra) -> list[dict]:
        tags = {"cellhub-pool": str(self.pool.pk), **extra}
        return [{"Key": key, "Value": value} for key, value in tags.items()]

    # -- pool -----------------------------------------------------------------------------
    def provision_pool(self) -> dict:
        """Create the RDS instance (deletion protection, encrypted storage, automated backups), or find it.

        Returns at once: RDS takes minutes to create an instance, and ``create_database`` raises
        ``TransientDriverError`` until it is available.
        """
        found = self.describe()
        if found is None:
            params = {
                "DBInstanceIdentifier": self.identifier,
                "DBInstanceClass": self.config.get("instance_class", "db.t4g.medium"),
                "Engine": "postgres",
                "AllocatedStorage": int(self.config.get("allocated_storage_gib", 100)),
                "StorageType": "gp3",
                "MasterUsername": self._master_username(),
                "MasterUserPassword": self._master_password(),
                "BackupRetentionPeriod": int(self.config.get("backup_retention_days", 7)),
                "DeletionProtection": True,
                "StorageEncrypted": True,
                "MultiAZ": bool(self.config.get("multi_az", False)),
                "PubliclyAccessible": False,
                "CopyTagsToSnapshot": True,
                "Tags": self._tags(),
                **self._network(),
            }
            if self.config.get("engine_version"):
                params["EngineVersion"] = self.config["engine_version"]
            if self.config.get("kms_key_id"):
                params["KmsKeyId"] = self.config["kms_key_id"]
            try:
                found = cloud_call(
                    f"create RDS instance {self.identifier}",
                    lambda: self._client("rds").create_db_instance(**params),
                    conflict=("DBInstanceAlreadyExists", "DBInstanceAlreadyExistsFault"),
                )["DBInstance"]
            except CloudConflictError:
                found = self.describe()
        return {"external_id": found["DBInstanceArn"], "config": {"db_instance_identifier": self.identifier}}

    # -- CloudWatch alarms ----------------------------------------------------------------
    def alarm_definitions(self, *, allocated_gib: int) -> list[dict]:
        """The pool's alarms (``PutMetricAlarm`` parameters): CPU, free storage and connections of its instance.

        Thresholds from config: ``alarm_cpu_percent`` (80, over 3 × 5 minutes), ``alarm_free_storage_percent``
        (10 % of the allocated storage), ``alarm_connections`` (400); actions: ``alarm_topic_arn`` (an SNS topic),
        none without it (the state is still read on the pool's admin page).
        """
        topic = [self.config["alarm_topic_arn"]] if self.config.get("alarm_topic_arn") else []
        free_bytes = int(allocated_gib * GIB * float(self.config.get("alarm_free_storage_percent", 10)) / 100)
        common = {
            "Namespace": "AWS/RDS",
            "Dimensions": [{"Name": "DBInstanceIdentifier", "Value": self.identifier}],
            "Period": 300,
            "ActionsEnabled": bool(topic),
            "AlarmActions": topic,
            "OKActions": topic,
            "Tags": self._tags(),
        }
        return [
            {**common, "AlarmName": f"{self.identifier}-cpu", "MetricName": "CPUUtilization", "Statistic": "Average",
             "EvaluationPeriods": 3, "Threshold": float(self.config.get("alarm_cpu_percent", 80)),
             "ComparisonOperator": "GreaterThanThreshold", "TreatMissingData": "missing",
             "AlarmDescription": f"Cell Hub pool {self.pool.pk}: CPU of {self.identifier} high for 15 minutes"},
            {**common, "AlarmName": f"{self.identifier}-free-storage", "MetricName": "FreeStorageSpace",
             "Statistic": "Minimum", "EvaluationPeriods": 1, "Threshold": float(free_bytes),
             "ComparisonOperator": "LessThanThreshold", "TreatMissingData": "missing",
             "AlarmDescription": f"Cell Hub pool {self.pool.pk}: {self.identifier} is running out of storage"},
            {**common, "AlarmName": f"{self.identifier}-connections", "MetricName": "DatabaseConnections",
             "Statistic": "Maximum", "EvaluationPeriods": 2,
             "Threshold": float(self.config.get("alarm_connections", 400)),
             "ComparisonOperator": "GreaterThanThreshold", "TreatMissingData": "missing",
             "AlarmDescription": f"Cell Hub pool {self.pool.pk}: {self.identifier} has too many connections"},
        ]

    def alarm_names(self) -> list[str]:
        return [f"{self.identifier}-{suffix}" for suffix in ("cpu", "free-storage", "connections")]

    def ensure_alarms(self) -> list[str]:
        """Create (or overwrite: PutMetricAlarm is idempotent) the pool's CloudWatch alarms; returns their names.
        The free-storage threshold follows the instance's allocated storage."""
        found = self.describe() or {}
        allocated = int(found.get("AllocatedStorage") or self.config.get("allocated_storage_gib", 100))
        cloudwatch = self._client("cloudwatch")
        for alarm in self.alarm_definitions(allocated_gib=allocated):
            cloud_call(f"put CloudWatch alarm {alarm['AlarmName']}",
                       lambda alarm=alarm: cloudwatch.put_metric_alarm(**alarm))
        return self.alarm_names()

    def delete_alarms(self) -> None:
        """Remove the pool's alarms; absent is fine (DeleteAlarms ignores unknown names)."""
        cloudwatch = self._client("cloudwatch")
        cloud_call(f"delete the CloudWatch alarms of {self.identifier}",
                   lambda: cloudwatch.delete_alarms(AlarmNames=self.alarm_names()))

    def alarm_states(self) -> dict[str, str]:
        """Each of the pool's alarms → its CloudWatch state (``OK``, ``ALARM``, ``INSUFFICIENT_DATA``); an absent
        alarm is not listed."""
        cloudwatch = self._client("cloudwatch")
        found = cloud_call(f"describe the CloudWatch alarms of {self.identifier}",
                           lambda: cloudwatch.describe_alarms(AlarmNames=self.alarm_names()))["MetricAlarms"]
        return {alarm["AlarmName"]: alarm["StateValue"] for alarm in found}

    def delete_pool(self) -> None:
        """Delete the pool's alarms, then the RDS instance after a final snapshot (lifting its deletion
        protection); absent is fine."""
        self.delete_alarms()
        found = self.describe()
        if found is None or found.get("DBInstanceStatus") == "deleting":
            return
        rds = self._client("rds")
        if found.get("DeletionProtection"):
            cloud_call(
                f"lift deletion protection of {self.identifier}",
                lambda: rds.modify_db_instance(
                    DBInstanceIdentifier=self.identifier, DeletionProtection=False, ApplyImmediately=True
                ),
            )
        # The final snapshot's name derives from the instance's; an earlier instance of the same pool (a top-up
        # retried after its first instance was deleted) left one of that name: the next one gets the time too.
        finals = [f"{self.identifier}-final", f"{self.identifier}-final-{datetime.now():%Y%m%d%H%M%S}"]
        for number, final in enumerate(finals, start=1):
            try:
                cloud_call(
                    f"delete RDS instance {self.identifier}",
                    lambda final=final: rds.delete_db_instance(
                        DBInstanceIdentifier=self.identifier,
                        SkipFinalSnapshot=False,
                        FinalDBSnapshotIdentifier=rds_identifier(final, max_length=255),
                        DeleteAutomatedBackups=False,
                    ),
                    not_found=("DBInstanceNotFound", "DBInstanceNotFoundFault"),
                    conflict=("DBSnapshotAlreadyExists", "DBSnapshotAlreadyExistsFault"),
                )
            except CloudNotFoundError:
                return
            except CloudConflictError:
                if number == len(finals):
                    raise
                continue
            return

    # -- SQL side -------------------------------------------------------------------------
    def endpoint(self) -> tuple[str, int]:
        """(host, port) of the RDS instance; ``TransientDriverError`` while RDS is still creating it."""
        found = self.describe()
        if found is None:
            raise PermanentDriverError(f"RDS pool {self.pool}: instance {self.identifier} does not exist")
        endpoint = found.get("Endpoint") or {}
        if not endpoint.get("Address"):
            raise TransientDriverError(
                f"RDS instance {self.identifier} has no endpoint yet (status {found.get('DBInstanceStatus')})"
            )
        return endpoint["Address"], int(endpoint.get("Port") or 5432)

    def admin_connect_kwargs(self) -> dict:
        """psycopg connection parameters of the master user on the instance's ``postgres`` database."""
        host, port = self.endpoint()
        return {
            "host": host,
            "port": port,
            "user": self._master_username(),
            "password": self._master_password(),
            "dbname": "postgres",
            "sslmode": self.config.get("sslmode", "require"),
            "connect_timeout": 10,
        }

    def credentials(self, instance, *, database: str | None = None) -> DatabaseCredentials:
        database = self.own_database(instance, database)
        login, password = self.login_name(instance), self.password(instance)
        host, port = self.endpoint()
        sslmode = self.config.get("sslmode", "require")
        return DatabaseCredentials(
            database=database,
            login=login,
            password=password,
            host=host,
            port=port,
            url=f"postgresql://{login}:{password}@{host}:{port}/{database}?sslmode={sslmode}",
        )

    def create_database(self, *, instance) -> DatabaseCredentials:
        """Create (or find) the instance's database and login on the RDS instance, over SQL."""
        ensure_instance_database(
            self.admin_connect_kwargs(),
            database=self.database_name(instance),
            login=self.login_name(instance),
            password=self.password(instance),
        )
        return self.credentials(instance)

    def own_database(self, instance, database: str | None) -> str:
        """``database`` (a restore switched the instance to it), else the derived one."""
        return database or self.database_name(instance)

    def drop_database(self, *, instance, database: str | None = None, drop_login: bool = True) -> None:
        """Drop the database and, with ``drop_login``, its login; absent (or no RDS instance at all) is fine.

        A restore's database (not the derived one) also loses the temporary RDS instance its restore made, so a
        failed restore's clean-up (the plan drops the unfinished database) leaves nothing running.
        """
        name = self.own_database(instance, database)
        if name != self.database_name(instance):
            self.delete_temporary(self.temporary_identifier(name))
        if self.describe() is None:
            return
        if drop_login:
            drop_instance_database(self.admin_connect_kwargs(), database=name, login=self.login_name(instance))
        else:
            _run_sql(self.admin_connect_kwargs(), lambda cursor: cursor.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            ))

    def database_exists(self, *, instance, database: str | None = None) -> bool:
        name = self.own_database(instance, database)

        def work(cursor):
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name])
            return cursor.fetchone() is not None

        return _run_sql(self.admin_connect_kwargs(), work)

    def list_databases(self) -> list[str]:
        def work(cursor):
            pattern = resource_prefix().replace("_", r"\_") + r"\_i%"
            cursor.execute("SELECT datname FROM pg_database WHERE datname LIKE %s ORDER BY datname", [pattern])
            return [row[0] for row in cursor.fetchall()]

        return _run_sql(self.admin_connect_kwargs(), work)

    # -- backups: one logical dump per database, to S3 --------------------------------------
    def backup_bucket(self) -> str:
        if not self.config.get("backup_bucket"):
            raise PermanentDriverError(f"RDS pool {self.pool}: config is missing backup_bucket (where dumps go)")
        return self.config["backup_bucket"]

    def backup_key(self, instance, database: str, label: str) -> str:
        return f"{self.identifier}/{resource_name('i', instance.pk)}/{database}/{label}.dump"

    def backup_database(
        self, *, instance, label: str, database: str | None = None, archive: bool = False
    ) -> BackupResult:
        """A ``pg_dump --format=custom`` of the instance's database (``database``, else the derived one), uploaded to
        ``s3://<backup_bucket>/<rds id>/<instance>/<database>/<label>.dump`` with SSE-KMS under the pool's key
        (``kms_key_id``; the account's S3 key when unset). The SHA-256, the database and the moment the dump holds
        (``taken_at``) ride in the object's metadata. No RDS snapshot is taken, so the manual-snapshot quota is
        never touched. The same label finds the dump already uploaded."""
        database = self.own_database(instance, database)
        bucket, s3 = self.backup_bucket(), self._client("s3")
        key = self.backup_key(instance, database, label)
        try:
            head = cloud_call(
                f"find backup s3://{bucket}/{key}", lambda: s3.head_object(Bucket=bucket, Key=key),
                not_found=("NoSuchKey", "404"),
            )
            metadata = head.get("Metadata", {})
            if metadata.get("sha256"):
                return self._backup_result(bucket, key, head["ContentLength"], metadata,
                                           head.get("SSEKMSKeyId", ""))
        except CloudNotFoundError:
            pass
        with tempfile.TemporaryFile() as spool:
            hashing = _HashingWriter(spool)
            taken_at = pg_dump_to(self.admin_connect_kwargs(), database=database, out=hashing,
                                  bin_dir=self.config.get("bin_dir"), where=f"RDS pool {self.pool}")
            metadata = {"sha256": hashing.digest.hexdigest(), "database": database, "taken-at": taken_at.isoformat(),
                        "instance": str(instance.pk), "label": label}
            extra = {"ServerSideEncryption": "aws:kms", "Metadata": metadata}
            if self.config.get("kms_key_id"):
                extra["SSEKMSKeyId"] = self.config["kms_key_id"]

            def upload():
                spool.seek(0)
                s3.upload_fileobj(spool, bucket, key, ExtraArgs=extra)

            cloud_call(f"upload backup s3://{bucket}/{key}", upload)
        return self._backup_result(bucket, key, hashing.size, metadata, self.config.get("kms_key_id") or "aws/s3")

    @staticmethod
    def _backup_result(bucket: str, key: str, size: int, metadata: dict, key_id: str) -> BackupResult:
        return BackupResult(
            location=f"s3://{bucket}/{key}",
            size_bytes=int(size),
            checksum=metadata["sha256"],
            encrypted_with=key_id or "aws:kms",
            extra={"taken_at": metadata.get("taken-at", ""), "database": metadata.get("database", ""),
                   "format": "pg_dump custom", "scope": "one database"},
        )

    def backup_checksum(self, *, location: str) -> str:
        """An S3 dump's SHA-256 as it is stored now (what ``backup_database`` recorded); ``PermanentDriverError``
        when it is missing."""
        return s3_object_sha256(self._client("s3"), location)

    def delete_backup(self, *, location: str) -> None:
        """Delete a backup (retention): every version of an S3 dump, or (older backups) an RDS manual snapshot by
        its ARN; absent is fine. Refuses a location that is neither."""
        if location.startswith("s3://"):
            bucket, _, key = location.removeprefix("s3://").partition("/")
            s3 = self._client("s3")

            def delete_every_version():
                listed = s3.list_object_versions(Bucket=bucket, Prefix=key)
                versions = [
                    {"Key": item["Key"], "VersionId": item["VersionId"]}
                    for item in listed.get("Versions", []) + listed.get("DeleteMarkers", [])
                    if item["Key"] == key
                ]
                if versions:
                    s3.delete_objects(Bucket=bucket, Delete={"Objects": versions, "Quiet": True})
                else:
                    s3.delete_object(Bucket=bucket, Key=key)

            try:
                cloud_call(f"delete backup {location}", delete_every_version, not_found=("NoSuchBucket",))
            except CloudNotFoundError:
                pass
            return
        if location.startswith("arn:aws:rds:") and ":snapshot:" in location:
            snapshot_id = location.rsplit(":snapshot:", 1)[1]
            try:
                cloud_call(
                    f"delete RDS snapshot {snapshot_id}",
                    lambda: self._client("rds").delete_db_snapshot(DBSnapshotIdentifier=snapshot_id),
                    not_found=("DBSnapshotNotFound", "DBSnapshotNotFoundFault"),
                )
            except CloudNotFoundError:
                pass
            return
        raise PermanentDriverError(f"RDS pool {self.pool}: {location} is not one of this driver's backups")

    # -- point-in-time restore: a temporary instance at T, one database extracted -----------
    def point_in_time_window(self, *, instance, database: str | None = None) -> tuple[datetime | None, datetime | None]:
        """(earliest, latest) second RDS can restore the instance's database to: from the later of the start of the
        instance's automated-backup retention (``BackupRetentionPeriod`` days back, not before the RDS instance was
        created) and the moment the customer's instance was created, to RDS's ``LatestRestorableTime``. (None,
        None) when the RDS instance keeps no automated backups. ``PermanentDriverError`` when it does not exist."""
        found = self.describe()
        if found is None:
            raise PermanentDriverError(f"RDS pool {self.pool}: instance {self.identifier} does not exist")
        retention = int(found.get("BackupRetentionPeriod") or 0)
        latest = found.get("LatestRestorableTime")
        if not retention or latest is None:
            return None, None
        candidates = [latest - timedelta(days=retention), instance.created_at]
        if found.get("InstanceCreateTime"):
            candidates.append(found["InstanceCreateTime"])
        return max(candidates), latest

    def temporary_identifier(self, new_database: str) -> str:
        """The temporary RDS instance a restore into ``new_database`` recovers the pool into."""
        return rds_identifier(f"{new_database}-tmp")

    def _wait(self, waiter_name: str, identifier: str) -> None:
        """Wait (boto3's RDS waiter) until ``identifier`` reaches the waiter's state. A state the waiter counts as
        failed (``failed``, ``incompatible-restore``…) is permanent; running out of attempts while RDS is still
        working (``creating``, ``backing-up``, ``deleting``) is transient, so the operation retries the step and
        finds the instance where it was."""
        waiter = self._client("rds").get_waiter(waiter_name)
        config = {"Delay": int(self.config.get("waiter_delay_seconds", 30)),
                  "MaxAttempts": int(self.config.get("waiter_max_attempts", 60))}
        try:
            cloud_call(
                f"wait for RDS instance {identifier} ({waiter_name})",
                lambda: waiter.wait(DBInstanceIdentifier=identifier, WaiterConfig=config),
            )
        except WaiterError as error:
            status = ""
            for found in (error.last_response or {}).get("DBInstances", []):
                status = found.get("DBInstanceStatus", "")
            if "Max attempts exceeded" in str(error):
                raise TransientDriverError(
                    f"RDS instance {identifier} is still {status or 'not ready'} ({waiter_name})"
                ) from error
            raise PermanentDriverError(f"RDS instance {identifier} ended {status or 'unusable'}: {error}") from error

    def _wait_restorable(self, point_in_time: datetime) -> None:
        """Wait until RDS can restore the pool's instance to ``point_in_time``: its ``LatestRestorableTime`` runs
        minutes behind now, and a rollback asks for a recent second. Polls every ``waiter_delay_seconds``,
        ``waiter_max_attempts`` times, then raises ``TransientDriverError`` (the step is retried)."""
        delay = int(self.config.get("waiter_delay_seconds", 30))
        attempts = max(1, int(self.config.get("waiter_max_attempts", 60)))
        latest = None
        for attempt in range(attempts):
            found = self.describe()
            if found is None:
                raise PermanentDriverError(f"RDS pool {self.pool}: instance {self.identifier} does not exist")
            latest = found.get("LatestRestorableTime")
            if latest is not None and latest >= point_in_time:
                return
            if attempt < attempts - 1:
                time.sleep(delay)
        raise TransientDriverError(
            f"RDS can restore {self.identifier} up to {latest} so far, not yet to {point_in_time}"
        )

    def _recover_into(self, *, instance, target: str, point_in_time: datetime) -> None:
        """Start RDS's own point-in-time restore of the pool's instance into ``target`` (found if it exists), once
        RDS can restore to ``point_in_time``."""
        if self.describe(target) is not None:
            return
        self._wait_restorable(point_in_time)
        params = {
            "SourceDBInstanceIdentifier": self.identifier,
            "TargetDBInstanceIdentifier": target,
            "RestoreTime": point_in_time,
            "PubliclyAccessible": False,
            "DeletionProtection": False,
            "MultiAZ": False,
            "Tags": self._tags(**{"cellhub-instance": str(instance.pk), "cellhub-temporary": "restore",
                                  "cellhub-restored-from": self.identifier}),
            **self._network(),
        }
        instance_class = self.config.get("restore_instance_class") or self.config.get("instance_class")
        if instance_class:
            params["DBInstanceClass"] = instance_class
        try:
            cloud_call(
                f"restore RDS instance {self.identifier} to {target}",
                lambda: self._client("rds").restore_db_instance_to_point_in_time(**params),
                conflict=("DBInstanceAlreadyExists", "DBInstanceAlreadyExistsFault"),
            )
        except CloudConflictError:
            pass

    def delete_temporary(self, target: str) -> None:
        """Delete a temporary restore instance (no final snapshot, its automated backups too) and wait until it is
        gone; absent is fine. Never the pool's own instance."""
        if target == self.identifier:
            raise PermanentDriverError(f"{target} is the pool's own RDS instance, not a temporary one")
        found = self.describe(target)
        if found is None:
            return
        rds = self._client("rds")
        if found.get("DBInstanceStatus") != "deleting":
            if found.get("DeletionProtection"):
                cloud_call(
                    f"lift deletion protection of {target}",
                    lambda: rds.modify_db_instance(DBInstanceIdentifier=target, DeletionProtection=False,
                                                   ApplyImmediately=True),
                )
            try:
                cloud_call(
                    f"delete temporary RDS instance {target}",
                    lambda: rds.delete_db_instance(DBInstanceIdentifier=target, SkipFinalSnapshot=True,
                                                   DeleteAutomatedBackups=True),
                    not_found=("DBInstanceNotFound", "DBInstanceNotFoundFault"),
                )
            except CloudNotFoundError:
                return
        self._wait("db_instance_deleted", target)

    def _source_database(self, instance, source: str) -> str:
        """The database the instance used at the time restored: ``?database=<name>`` (what the restore plan passes
        to a provider that keeps its own backups), or the one named in an S3 dump of this driver, else the
        derived one."""
        named = parse_qs(urlparse(source).query).get("database")
        if named:
            return named[0]
        if source.startswith("s3://"):
            bucket, _, key = source.removeprefix("s3://").partition("/")
            head = cloud_call(f"read backup {source}",
                              lambda: self._client("s3").head_object(Bucket=bucket, Key=key))
            return head.get("Metadata", {}).get("database") or self.database_name(instance)
        return self.database_name(instance)

    def restore_database(self, *, instance, point_in_time: datetime, new_database: str, source: str = "") -> str:
        """Restore the instance's database as it was at ``point_in_time`` into the NEW database ``new_database`` of
        the pool's RDS instance; returns ``new_database``.

        RDS recovers whole instances: the pool's instance is restored to ``point_in_time`` into a temporary RDS
        instance (``restore_db_instance_to_point_in_time``, waited for until ``available``); the one database is
        dumped from it (``pg_dump`` as the master user) and loaded into ``new_database`` (created empty, owned by
        the instance's login, open to it alone; ``pg_restore`` as that login, one transaction); then the temporary
        instance is deleted and waited for. Any permanent failure deletes the temporary instance too (a transient
        one keeps it, so the retried step resumes). The pool's live databases are never written to but for the
        new one. Idempotent: a finished ``new_database`` is returned as is, an unfinished one redone.
        """
        if new_database == self.database_name(instance):
            raise PermanentDriverError(f"restore must go to a new database, not onto {new_database}")
        target = self.temporary_identifier(new_database)
        comment = self._database_comment(new_database)
        if comment is not None and comment.startswith(RESTORED_COMMENT):
            self.delete_temporary(target)
            return new_database
        if comment is not None and comment != RESTORING_COMMENT:
            raise PermanentDriverError(f"database {new_database} exists and is not an unfinished restore: not touched")
        source_database = self._source_database(instance, source)
        self._recover_into(instance=instance, target=target, point_in_time=point_in_time)
        try:
            self._wait("db_instance_available", target)
            found = self.describe(target) or {}
            endpoint = found.get("Endpoint") or {}
            if not endpoint.get("Address"):
                raise TransientDriverError(f"temporary RDS instance {target} has no endpoint yet")
            temporary = {**self.admin_connect_kwargs(), "host": endpoint["Address"],
                         "port": int(endpoint.get("Port") or 5432)}
            with tempfile.TemporaryFile() as spool:
                pg_dump_to(temporary, database=source_database, out=spool, bin_dir=self.config.get("bin_dir"),
                           where=f"temporary RDS instance {target}")
                self._create_restore_target(instance, new_database)
                spool.seek(0)
                login = {**self.admin_connect_kwargs(), "user": self.login_name(instance),
                         "password": self.password(instance)}
                pg_restore_from(login, database=new_database, chunks=iter(lambda: spool.read(1 << 20), b""),
                                bin_dir=self.config.get("bin_dir"), where=f"RDS pool {self.pool}")
            done = f"{RESTORED_COMMENT} at {point_in_time.isoformat()} via {target}"
            _run_sql(self.admin_connect_kwargs(), lambda cursor: cursor.execute(
                sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(new_database), sql.Literal(done))
            ))
        except TransientDriverError:
            raise
        except BaseException:
            self.delete_temporary(target)
            raise
        self.delete_temporary(target)
        return new_database

    def _database_comment(self, database: str) -> str | None:
        """The comment of ``database`` on the pool's instance ('' when none), or None when it does not exist."""

        def work(cursor):
            cursor.execute(
                "SELECT coalesce(shobj_description(oid, 'pg_database'), '') FROM pg_database WHERE datname = %s",
                [database],
            )
            row = cursor.fetchone()
            return None if row is None else row[0]

        return _run_sql(self.admin_connect_kwargs(), work)

    def _create_restore_target(self, instance, database: str) -> None:
        """``database`` made anew, empty, owned by the instance's login, open to it alone, marked unfinished."""
        login, identifier = self.login_name(instance), sql.Identifier(database)

        def work(cursor):
            cursor.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(sql.Identifier(login)))
            cursor.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(identifier))
            cursor.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(identifier, sql.Identifier(login)))
            cursor.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(identifier, sql.Literal(RESTORING_COMMENT)))
            for statement in isolation_statements(database=database, login=login):
                cursor.execute(statement)

        _run_sql(self.admin_connect_kwargs(), work)


class _HashingWriter:
    """A binary writer that counts and hashes (SHA-256) what passes through it."""

    def __init__(self, target):
        self.target, self.digest, self.size = target, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.target.write(data)
