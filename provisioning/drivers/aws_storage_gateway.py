"""AWS Storage Gateway (S3 File Gateway) as a storage pool: one gateway; one S3 bucket + NFS file share per slot.

Pool config (no secrets):

- ``gateway_arn`` (or the pool's ``external_id``) once the appliance is activated; otherwise
  ``activation_key`` (from the appliance's console) to activate it, with ``gateway_timezone`` (default GMT);
- ``role_arn`` (required): the IAM role the gateway assumes to reach the buckets;
- ``kms_key_arn``: the KMS key of the buckets and file shares (default: a key the driver creates, with the
  alias ``alias/<prefix>-p<pool id>``);
- ``bucket_prefix`` (default none): prepended to the share's name to make the bucket's (S3 names are global);
- ``admin_principal_arns``: principals besides the gateway role allowed into the buckets (default: the
  hub's own identity, from STS) — the bucket policy denies everyone else;
- ``archive_bucket`` (required to archive and for files backups): the deep-storage bucket, also where the
  version manifests of files backups are kept;
- ``version_retention_days`` (default 35): how long a replaced version stays restorable;
- ``subnet_id``: the hub starts the gateway itself (EC2 appliance, security group, activation, DNS record —
  ``aws_gateway_appliance``, which lists its own keys) instead of being given ``gateway_arn``/``activation_key``.

A share's data lives in its bucket, not in the gateway: ``replace_pool`` re-associates every bucket with a
new gateway by creating its NFS file share there, losing nothing. The endpoint is
``nfs://<gateway address>/<bucket>``. The firewall is the file share's NFS client list (one address).
"""
from __future__ import annotations

import base64
import hashlib
import json
import shutil
import tempfile
import zipfile

from django.utils import timezone

from provisioning.drivers.aws_gateway_appliance import GatewayAppliance
from provisioning.drivers.aws_s3 import s3_object_sha256
from provisioning.drivers.base import (
    BackupResult,
    Capabilities,
    PermanentDriverError,
    StorageDriver,
    TransientDriverError,
)
from provisioning.drivers.base import resource_name as _resource_name
from provisioning.drivers.cloud_retry import CloudConflictError, CloudNotFoundError, aws_client, cloud_call

# NFS clients allowed on a share nobody holds: the loopback address, which no NFS client of the gateway has
# (the API refuses an empty list).
NO_CLIENT = "127.0.0.1/32"
SINGLE_PUT_LIMIT = 5 * (1 << 30)
GATEWAY_ROLE_ACTIONS = [
    "s3:GetAccelerateConfiguration",
    "s3:GetBucketLocation",
    "s3:GetBucketVersioning",
    "s3:ListBucket",
    "s3:ListBucketVersions",
    "s3:ListBucketMultipartUploads",
    "s3:AbortMultipartUpload",
    "s3:DeleteObject",
    "s3:DeleteObjectVersion",
    "s3:GetObject",
    "s3:GetObjectAcl",
    "s3:GetObjectVersion",
    "s3:ListMultipartUploadParts",
    "s3:PutObject",
    "s3:PutObjectAcl",
]


def role_arn_of(caller_arn: str) -> str:
    """The IAM ARN ``aws:PrincipalArn`` matches for a caller: an assumed role's session becomes its role."""
    if ":assumed-role/" in caller_arn:
        account = caller_arn.split(":")[4]
        role = caller_arn.split(":assumed-role/", 1)[1].split("/", 1)[0]
        return f"arn:aws:iam::{account}:role/{role}"
    return caller_arn


def bucket_policy(*, bucket: str, role_arn: str, admin_arns: list[str]) -> dict:
    """TLS only; the gateway role (and the hub's admins) only; the gateway role gets what a file share needs."""
    resources = [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "DenyInsecureTransport",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:*",
                "Resource": resources,
                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
            },
            {
                "Sid": "DenyAllButTheGatewayRoleAndTheHub",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:*",
                "Resource": resources,
                "Condition": {"ArnNotEquals": {"aws:PrincipalArn": [role_arn, *admin_arns]}},
            },
            {
                "Sid": "GatewayRole",
                "Effect": "Allow",
                "Principal": {"AWS": role_arn},
                "Action": GATEWAY_ROLE_ACTIONS,
                "Resource": resources,
            },
        ],
    }


# Storage Gateway answers most faults as HTTP 400 ``InvalidGatewayRequestException`` and says what it means in
# ``error.errorCode``: only these mean the thing named is gone; an offline gateway must not read as "not found".
GATEWAY_NOT_FOUND = frozenset({"GatewayNotFound", "InvalidGateway"})
GATEWAY_OFFLINE = frozenset({
    "GatewayNotConnected", "GatewayInternalError", "GatewayProxyNetworkConnectionBusy", "ServiceUnavailable",
    "RequestTimeout", "InternalError", "NetworkConfigurationChanged", "OperationAborted",
})


def gateway_call(what: str, fn, *, not_found: bool = False):
    """``cloud_call`` for a Storage Gateway call, reading ``InvalidGatewayRequestException`` by its ``errorCode``:
    ``GatewayNotFound`` raises ``CloudNotFoundError`` (only when ``not_found`` asks for it, else permanent), an
    offline or busy gateway ``TransientDriverError`` (the operation retries later), anything else is permanent."""

    def guarded():
        try:
            return fn()
        except Exception as error:
            response = getattr(error, "response", None) or {}
            if response.get("Error", {}).get("Code") != "InvalidGatewayRequestException":
                raise
            code = (response.get("error") or {}).get("errorCode", "")
            message = response.get("Error", {}).get("Message", "")
            if code in GATEWAY_NOT_FOUND and not_found:
                raise CloudNotFoundError(f"{what}: not found ({code}: {message})") from error
            if code in GATEWAY_OFFLINE:
                raise TransientDriverError(f"{what}: the gateway is not reachable now ({code}: {message})") from error
            raise PermanentDriverError(f"{what} was refused: {code or 'InvalidGatewayRequestException'}: {message}") \
                from error

    return cloud_call(what, guarded)


class StorageGatewayDriver(StorageDriver):
    """Buckets and NFS file shares of one S3 File Gateway; every AWS call through ``cloud_call``."""

    provider = "aws_storage_gateway"
    label = "AWS Storage Gateway"
    clouds = ("aws",)
    default_for_clouds = ("aws",)
    lead_time_hours = 4.0
    host_config_keys = ("gateway_arn", "activation_key", "gateway_instance_id", "security_group_id",
                        "gateway_dns_name", "gateway_private_ip")
    # Buckets outlive their gateway, so a failed gateway's shares move to a new one; buckets are versioned, so a
    # files backup is the list of versions at a moment and a restore brings those back; retention deletes.
    capabilities = Capabilities(host_replacement=True, file_restore=True, backup_deletion=True)

    def __init__(self, pool):
        super().__init__(pool)
        self._clients: dict = {}
        self._gateway_arn: str = pool.external_id or self.config.get("gateway_arn", "")
        self._kms_key: str = self.config.get("kms_key_arn", "")
        self._addresses: dict[str, str] = {}

    def _client(self, service: str):
        """The boto3 client of ``service`` in the pool's region, created on first use."""
        if service not in self._clients:
            self._clients[service] = aws_client(service, self.region)
        return self._clients[service]

    @property
    def region(self) -> str:
        return self.pool.reef.region.location

    @property
    def role_arn(self) -> str:
        if not self.config.get("role_arn"):
            raise PermanentDriverError(f"Storage Gateway pool {self.pool}: config is missing role_arn")
        return self.config["role_arn"]

    def bucket_name(self, share) -> str:
        return f"{self.config.get('bucket_prefix', '')}{share.name}".lower()[:63]

    def gateway_arn(self) -> str:
        if not self._gateway_arn:
            raise PermanentDriverError(
                f"Storage Gateway pool {self.pool}: no gateway yet; set config gateway_arn or activation_key "
                "and provision the pool"
            )
        return self._gateway_arn

    # -- gateway --------------------------------------------------------------------------
    def _gateway_name(self) -> str:
        return _resource_name("p", self.pool.pk)

    def ensure_gateway(self) -> str:
        """The gateway's ARN: the configured one, one already activated under this pool's name, or a new
        activation with ``activation_key``. Raises ``PermanentDriverError`` when there is none of these."""
        sgw = self._client("storagegateway")
        if self._gateway_arn:
            arn = self._gateway_arn
            gateway_call(f"describe gateway {arn}", lambda: sgw.describe_gateway_information(GatewayARN=arn))
            return arn

        def by_name():
            marker = None
            while True:
                page = sgw.list_gateways(**({"Marker": marker} if marker else {}))
                for gateway in page.get("Gateways", []):
                    if gateway.get("GatewayName") == self._gateway_name():
                        return gateway["GatewayARN"]
                marker = page.get("Marker")
                if not marker:
                    return None

        arn = gateway_call("list gateways", by_name)
        if arn is None:
            key = self.config.get("activation_key")
            if not key and self.config.get("subnet_id"):
                key = self.appliance().activation_key()
            if not key:
                raise PermanentDriverError(
                    f"Storage Gateway pool {self.pool}: config needs gateway_arn (an activated gateway), "
                    "activation_key (to activate an appliance), or subnet_id (the hub starts the appliance)"
                )
            arn = gateway_call(
                f"activate gateway {self._gateway_name()}",
                lambda: sgw.activate_gateway(
                    ActivationKey=key,
                    GatewayName=self._gateway_name(),
                    GatewayTimezone=self.config.get("gateway_timezone", "GMT"),
                    GatewayRegion=self.region,
                    GatewayType="FILE_S3",
                    Tags=[{"Key": "cellhub-pool", "Value": str(self.pool.pk)}],
                ),
            )["GatewayARN"]
        self._gateway_arn = arn
        return arn

    def ensure_cache(self, gateway_arn: str) -> None:
        """Give the gateway its cache: every local disk listed ``AVAILABLE``, unless ``DescribeCache`` already
        names cache disks (its ``DiskIds``). Raises ``PermanentDriverError`` when there is no disk to use."""
        sgw = self._client("storagegateway")
        cache = gateway_call(f"describe the cache of {gateway_arn}", lambda: sgw.describe_cache(GatewayARN=gateway_arn))
        if cache.get("DiskIds"):
            return
        disks = gateway_call(
            f"list local disks of {gateway_arn}", lambda: sgw.list_local_disks(GatewayARN=gateway_arn)
        )["Disks"]
        available = [disk["DiskId"] for disk in disks if disk.get("DiskAllocationType") == "AVAILABLE"]
        if not available:
            raise PermanentDriverError(f"gateway {gateway_arn} has no local disk to use as its cache")
        gateway_call(
            f"add cache to {gateway_arn}", lambda: sgw.add_cache(GatewayARN=gateway_arn, DiskIds=available)
        )

    def gateway_address(self, gateway_arn: str) -> str:
        """The IPv4 address NFS clients mount the gateway's shares from."""
        if gateway_arn not in self._addresses:
            sgw = self._client("storagegateway")
            info = gateway_call(
                f"describe gateway {gateway_arn}", lambda: sgw.describe_gateway_information(GatewayARN=gateway_arn)
            )
            interfaces = [i for i in info.get("GatewayNetworkInterfaces", []) if i.get("Ipv4Address")]
            if not interfaces:
                raise TransientDriverError(f"gateway {gateway_arn} reports no network address yet")
            self._addresses[gateway_arn] = interfaces[0]["Ipv4Address"]
        return self._addresses[gateway_arn]

    def endpoint(self, gateway_arn: str, share) -> str:
        return f"nfs://{self.gateway_address(gateway_arn)}/{self.bucket_name(share)}"

    # -- keys and buckets -----------------------------------------------------------------
    def kms_key_arn(self) -> str:
        """The configured key, or the pool's own (alias ``alias/<prefix>-p<pool id>``), created on first use."""
        if self._kms_key:
            return self._kms_key
        kms, alias = self._client("kms"), f"alias/{self._gateway_name()}"
        try:
            key = cloud_call(
                f"describe KMS key {alias}", lambda: kms.describe_key(KeyId=alias), not_found=("NotFoundException",)
            )
        except CloudNotFoundError:
            key = cloud_call(
                f"create KMS key for {alias}",
                lambda: kms.create_key(
                    Description=f"Cell Hub storage pool {self.pool.pk}",
                    Tags=[{"TagKey": "cellhub-pool", "TagValue": str(self.pool.pk)}],
                ),
            )
            key_id = key["KeyMetadata"]["KeyId"]
            cloud_call(f"enable rotation of {alias}", lambda: kms.enable_key_rotation(KeyId=key_id))
            try:
                cloud_call(
                    f"create KMS alias {alias}",
                    lambda: kms.create_alias(AliasName=alias, TargetKeyId=key_id),
                    conflict=("AlreadyExistsException",),
                )
            except CloudConflictError:  # another worker won the race: use its key, leave ours unused
                key = cloud_call(f"describe KMS key {alias}", lambda: kms.describe_key(KeyId=alias))
        self._kms_key = key["KeyMetadata"]["Arn"]
        return self._kms_key

    def _admin_arns(self) -> list[str]:
        if self.config.get("admin_principal_arns"):
            return list(self.config["admin_principal_arns"])
        caller = cloud_call("identify the hub (STS)", lambda: self._client("sts").get_caller_identity())
        return [role_arn_of(caller["Arn"])]

    def ensure_bucket(self, bucket: str) -> None:
        """Create the bucket (or find it) and (re)apply: public access blocked, versioning, SSE-KMS by default,
        the bucket policy. Raises ``PermanentDriverError`` if another account owns the name."""
        s3 = self._client("s3")
        create = {"Bucket": bucket}
        if self.region != "us-east-1":
            create["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            cloud_call(
                f"create S3 bucket {bucket}",
                lambda: s3.create_bucket(**create),
                conflict=("BucketAlreadyOwnedByYou",),
            )
        except CloudConflictError as conflict:
            if conflict.code != "BucketAlreadyOwnedByYou":
                raise PermanentDriverError(f"S3 bucket name {bucket} is taken by another account") from None
        cloud_call(
            f"block public access to {bucket}",
            lambda: s3.put_public_access_block(
                Bucket=bucket,
                PublicAccessBlockConfiguration={
                    "BlockPublicAcls": True,
                    "IgnorePublicAcls": True,
                    "BlockPublicPolicy": True,
                    "RestrictPublicBuckets": True,
                },
            ),
        )
        cloud_call(
            f"enable versioning of {bucket}",
            lambda: s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"}),
        )
        days = int(self.config.get("version_retention_days", 35))
        cloud_call(
            f"expire old versions in {bucket}",
            lambda: s3.put_bucket_lifecycle_configuration(
                Bucket=bucket,
                LifecycleConfiguration={"Rules": [{
                    "ID": "cellhub-noncurrent-versions",
                    "Status": "Enabled",
                    "Filter": {"Prefix": ""},
                    "NoncurrentVersionExpiration": {"NoncurrentDays": days},
                    "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7},
                }]},
            ),
        )
        key = self.kms_key_arn()
        cloud_call(
            f"set default encryption of {bucket}",
            lambda: s3.put_bucket_encryption(
                Bucket=bucket,
                ServerSideEncryptionConfiguration={
                    "Rules": [
                        {
                            "ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": key},
                            "BucketKeyEnabled": True,
                        }
                    ]
                },
            ),
        )
        policy = bucket_policy(bucket=bucket, role_arn=self.role_arn, admin_arns=self._admin_arns())
        cloud_call(
            f"set the policy of {bucket}", lambda: s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
        )

    # -- file shares ----------------------------------------------------------------------
    def file_shares(self, gateway_arn: str, *, not_found: bool = False) -> list[dict]:
        """The NFS file shares of the gateway (``NFSFileShareInfo`` dicts); ``not_found``: a gateway that does not
        exist raises ``CloudNotFoundError`` (else it is a permanent error)."""
        sgw = self._client("storagegateway")

        def collect():
            arns, marker = [], None
            while True:
                page = sgw.list_file_shares(GatewayARN=gateway_arn, **({"Marker": marker} if marker else {}))
                listed = page.get("FileShareInfoList", [])
                arns += [info["FileShareARN"] for info in listed if info.get("FileShareType") == "NFS"]
                marker = page.get("NextMarker")
                if not marker:
                    break
            infos = []
            for start in range(0, len(arns), 10):
                infos += sgw.describe_nfs_file_shares(FileShareARNList=arns[start : start + 10])["NFSFileShareInfoList"]
            return infos

        return gateway_call(f"list file shares of {gateway_arn}", collect, not_found=not_found)

    @staticmethod
    def _serves(info: dict, bucket: str) -> bool:
        location = info.get("LocationARN", "")
        return location == f"arn:aws:s3:::{bucket}" or location.startswith(f"arn:aws:s3:::{bucket}/")

    def find_file_share(self, gateway_arn: str, bucket: str, shares: list[dict] | None = None) -> dict | None:
        shares = self.file_shares(gateway_arn) if shares is None else shares
        return next((info for info in shares if self._serves(info, bucket)), None)

    def ensure_file_share(self, gateway_arn: str, share, existing: list[dict] | None = None) -> str:
        """Create the share's NFS file share on ``gateway_arn`` (or find it); returns its ARN.

        The client token derives from the gateway and the share, so AWS itself makes a repeat a no-op.
        """
        bucket = self.bucket_name(share)
        found = self.find_file_share(gateway_arn, bucket, existing)
        if found is not None:
            return found["FileShareARN"]
        sgw, key = self._client("storagegateway"), self.kms_key_arn()
        gateway_id = gateway_arn.rsplit("/", 1)[-1]
        params = {
            "ClientToken": f"{_resource_name('s', share.pk)}-{gateway_id}"[:100],
            "NFSFileShareDefaults": {"FileMode": "0664", "DirectoryMode": "0775", "GroupId": 65534, "OwnerId": 65534},
            "GatewayARN": gateway_arn,
            "EncryptionType": "SseKms",
            "KMSEncrypted": True,
            "KMSKey": key,
            "Role": self.role_arn,
            "LocationARN": f"arn:aws:s3:::{bucket}",
            "DefaultStorageClass": "S3_STANDARD",
            "ObjectACL": "bucket-owner-full-control",
            "ClientList": [share.firewall_address or NO_CLIENT],
            "Squash": "RootSquash",
            "ReadOnly": False,
            "FileShareName": bucket,
            "Tags": [{"Key": "cellhub-share", "Value": str(share.pk)}, {"Key": "cellhub-status", "Value": "available"}],
        }
        return gateway_call(
            f"create NFS file share {bucket} on {gateway_id}", lambda: sgw.create_nfs_file_share(**params)
        )["FileShareARN"]

    # -- pool -----------------------------------------------------------------------------
    def provision_pool(self) -> dict:
        """Activate (or find) the gateway, give it a cache, and create every slot's bucket and NFS file share.

        Safe to repeat: each piece is found when it exists. Returns the gateway ARN and the KMS key.
        """
        arn = self.ensure_gateway()
        self.ensure_cache(arn)
        existing = self.file_shares(arn)
        for share in self.pool.shares.order_by("slot"):
            self.ensure_bucket(self.bucket_name(share))
            self.ensure_file_share(arn, share, existing)
        config = {"gateway_arn": arn, "kms_key_arn": self.kms_key_arn()}
        if self.config.get("subnet_id"):
            appliance = self.appliance()
            config.update(appliance.found_config())
            config["gateway_dns_name"] = appliance.ensure_dns_record(self.gateway_address(arn))
        return {"external_id": arn, "config": config}

    def appliance(self) -> GatewayAppliance:
        """The gateway's EC2 appliance, its security group and DNS record (``aws_gateway_appliance``)."""
        return GatewayAppliance(self)

    def delete_pool(self) -> None:
        """The gateway is an appliance outside the hub's control: delete its file shares, keep the buckets.

        Buckets hold customer data; ``delete_share`` removes one once it has been scrubbed. A gateway the hub
        started (config ``subnet_id``) goes entirely: the gateway, its EC2 instance, security group and DNS record.
        """
        self._delete_file_shares()
        if self.config.get("subnet_id"):
            if self._gateway_arn:
                sgw, arn = self._client("storagegateway"), self._gateway_arn
                try:
                    gateway_call(f"delete gateway {arn}", lambda: sgw.delete_gateway(GatewayARN=arn), not_found=True)
                except CloudNotFoundError:
                    pass
            self.appliance().delete()

    def _file_shares_if_any(self) -> list[dict]:
        """The gateway's NFS file shares; none when the pool has no gateway or the gateway is gone (deleted by an
        earlier call of ``delete_pool``: its file shares went with it)."""
        if not self._gateway_arn:
            return []
        try:
            return self.file_shares(self._gateway_arn, not_found=True)
        except CloudNotFoundError:
            return []

    def _delete_file_shares(self) -> None:
        sgw = self._client("storagegateway")
        for info in self._file_shares_if_any():
            try:
                gateway_call(
                    f"delete file share {info['FileShareARN']}",
                    lambda info=info: sgw.delete_file_share(FileShareARN=info["FileShareARN"]),
                    not_found=True,
                )
            except CloudNotFoundError:
                pass

    def replace_pool(self, new_host: str) -> dict:
        """Re-associate every share's bucket with ``new_host``, the ARN of a replacement gateway: NFS file shares
        on the new gateway pointing at the SAME buckets, with the same client lists. No data moves or is lost.

        Returns ``{"external_id", "config", "endpoints": {share name: new endpoint}}``; safe to repeat.
        """
        self.ensure_cache(new_host)
        existing = self.file_shares(new_host)
        endpoints = {}
        for share in self.pool.shares.order_by("slot"):
            self.ensure_file_share(new_host, share, existing)
            endpoints[share.name] = self.endpoint(new_host, share)
        self._gateway_arn = new_host
        return {"external_id": new_host, "config": {"gateway_arn": new_host}, "endpoints": endpoints}

    # -- shares ---------------------------------------------------------------------------
    def create_share(self, *, share) -> str:
        """Create (or find) the share's bucket and NFS file share; returns ``nfs://<gateway>/<bucket>``."""
        arn = self.gateway_arn()
        self.ensure_bucket(self.bucket_name(share))
        self.ensure_file_share(arn, share)
        return self.endpoint(arn, share)

    def _require_file_share(self, share) -> dict:
        found = self.find_file_share(self.gateway_arn(), self.bucket_name(share))
        if found is None:
            raise PermanentDriverError(f"share {share.name} has no NFS file share on {self.gateway_arn()}")
        return found

    def set_firewall(self, *, share, address: str) -> None:
        """The file share's NFS client list becomes ``[address]`` (empty: a client list no one matches); on a gateway
        the hub started, its security group's NFS rules become exactly the pool's instance addresses."""
        found = self._require_file_share(share)
        status = found.get("FileShareStatus", "")
        if status != "AVAILABLE":
            # CREATING / UPDATING refuse an update; a retry after the gateway settles applies it.
            raise TransientDriverError(f"file share of {share.name} is {status or 'not ready'}; updated once AVAILABLE")
        file_share_arn = found["FileShareARN"]
        sgw = self._client("storagegateway")
        gateway_call(
            f"set the client list of {share.name}",
            lambda: sgw.update_nfs_file_share(FileShareARN=file_share_arn, ClientList=[address or NO_CLIENT]),
        )
        if self.config.get("subnet_id"):
            others = self.pool.shares.exclude(pk=share.pk).exclude(firewall_address="")
            self.appliance().sync_nfs_clients(set(others.values_list("firewall_address", flat=True)) | {address})


    def _bucket_exists(self, bucket: str) -> bool:
        try:
            cloud_call(
                f"find S3 bucket {bucket}",
                lambda: self._client("s3").head_bucket(Bucket=bucket),
                not_found=("NoSuchBucket", "404"),
            )
        except CloudNotFoundError:
            return False
        return True

    def share_exists(self, *, share) -> bool:
        """The bucket exists and the current gateway serves it."""
        bucket = self.bucket_name(share)
        return self._bucket_exists(bucket) and self.find_file_share(self.gateway_arn(), bucket) is not None

    def delete_share(self, *, share) -> None:
        """Remove the NFS file share, then the bucket; absent is fine (a gateway that is gone too). A bucket still
        holding data is kept and ``PermanentDriverError`` raised: scrub (or archive and scrub) it first."""
        bucket = self.bucket_name(share)
        if self._gateway_arn:
            found = self.find_file_share(self._gateway_arn, bucket, self._file_shares_if_any())
            if found is not None:
                sgw = self._client("storagegateway")
                gateway_call(
                    f"delete file share {bucket}", lambda: sgw.delete_file_share(FileShareARN=found["FileShareARN"])
                )
        try:
            cloud_call(
                f"delete S3 bucket {bucket}",
                lambda: self._client("s3").delete_bucket(Bucket=bucket),
                not_found=("NoSuchBucket",),
                conflict=("BucketNotEmpty",),
            )
        except CloudNotFoundError:
            pass
        except CloudConflictError:
            raise PermanentDriverError(f"S3 bucket {bucket} still holds data: scrub the share first") from None

    def list_shares(self) -> list[str]:
        """Share names (bucket names less ``bucket_prefix``) the gateway serves."""
        prefix = self.config.get("bucket_prefix", "")
        names = []
        for info in self.file_shares(self.gateway_arn()):
            bucket = info.get("LocationARN", "").removeprefix("arn:aws:s3:::").split("/", 1)[0]
            names.append(bucket.removeprefix(prefix))
        return sorted(names)

    def scrub_share(self, *, share) -> None:
        """Delete every object version and delete marker in the bucket, then refresh the gateway's cache of it."""
        bucket, s3 = self.bucket_name(share), self._client("s3")

        def delete_everything():
            for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
                keys = [
                    {"Key": item["Key"], "VersionId": item["VersionId"]}
                    for item in page.get("Versions", []) + page.get("DeleteMarkers", [])
                ]
                if keys:
                    response = s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
                    if response.get("Errors"):
                        first = response["Errors"][0]
                        raise TransientDriverError(f"scrub {bucket}: {first.get('Code')} on {first.get('Key')}")

        cloud_call(f"scrub S3 bucket {bucket}", delete_everything)
        if self._gateway_arn:
            found = self.find_file_share(self._gateway_arn, bucket)
            if found is not None:
                sgw = self._client("storagegateway")
                gateway_call(
                    f"refresh the gateway cache of {bucket}",
                    lambda: sgw.refresh_cache(FileShareARN=found["FileShareARN"], FolderList=["/"], Recursive=True),
                )

    def archive_share(self, *, share, label: str) -> BackupResult:
        """Zip the bucket's current objects to ``<archive_bucket>/<share>/<label>.zip`` (DEEP_ARCHIVE, SSE-KMS),
        its SHA-256 checked by S3 on upload and kept in the object's metadata.

        Raises ``TransientDriverError`` while the gateway still has data to upload (its cache is dirty),
        so nothing written through NFS is missed. The same label finds the archive already made.
        """
        archive_bucket = self.config.get("archive_bucket")
        if not archive_bucket:
            raise PermanentDriverError(f"Storage Gateway pool {self.pool}: config is missing archive_bucket")
        bucket, s3, key = self.bucket_name(share), self._client("s3"), f"{share.name}/{label}.zip"
        try:
            head = cloud_call(
                f"find archive {key}",
                lambda: s3.head_object(Bucket=archive_bucket, Key=key),
                not_found=("NoSuchKey", "404"),
            )
            if head.get("Metadata", {}).get("sha256"):
                return self._archive_result(archive_bucket, key, head["ContentLength"], head["Metadata"]["sha256"])
        except CloudNotFoundError:
            pass
        if self._gateway_arn:
            sgw, arn = self._client("storagegateway"), self._gateway_arn
            cache = gateway_call(f"describe the cache of {arn}", lambda: sgw.describe_cache(GatewayARN=arn))
            if cache.get("CacheDirtyPercentage", 0) > 0:
                raise TransientDriverError(f"gateway {arn} is still uploading to S3; archive {share.name} later")
        kms_key = self.kms_key_arn()
        with tempfile.TemporaryFile() as spool:
            with zipfile.ZipFile(spool, "w", compression=zipfile.ZIP_DEFLATED) as archive:
                for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                    for item in page.get("Contents", []):
                        if item["Key"].endswith("/") and item["Size"] == 0:
                            continue  # a folder marker the gateway writes
                        body = cloud_call(
                            f"read s3://{bucket}/{item['Key']}",
                            lambda item=item: s3.get_object(Bucket=bucket, Key=item["Key"])["Body"],
                        )
                        with archive.open(item["Key"], "w", force_zip64=True) as entry:
                            shutil.copyfileobj(body, entry, 1 << 20)
            size = spool.tell()
            spool.seek(0)
            digest = hashlib.sha256()
            for chunk in iter(lambda: spool.read(1 << 20), b""):
                digest.update(chunk)
            extra = {
                "StorageClass": "DEEP_ARCHIVE",
                "ServerSideEncryption": "aws:kms",
                "SSEKMSKeyId": kms_key,
                "Metadata": {"sha256": digest.hexdigest(), "share": share.name, "label": label},
            }

            def upload():
                spool.seek(0)
                if size < SINGLE_PUT_LIMIT:
                    checksum = base64.b64encode(digest.digest()).decode()
                    s3.put_object(Bucket=archive_bucket, Key=key, Body=spool, ChecksumSHA256=checksum, **extra)
                else:  # multipart: S3 checks each part; the whole file's SHA-256 stays in the metadata
                    s3.upload_fileobj(spool, archive_bucket, key, ExtraArgs={**extra, "ChecksumAlgorithm": "SHA256"})

            cloud_call(f"upload archive s3://{archive_bucket}/{key}", upload)
        return self._archive_result(archive_bucket, key, size, digest.hexdigest())

    def _archive_result(self, bucket: str, key: str, size: int, sha256: str) -> BackupResult:
        return BackupResult(
            location=f"s3://{bucket}/{key}",
            size_bytes=int(size),
            checksum=sha256,
            encrypted_with=self.kms_key_arn(),
            extra={"storage_class": "DEEP_ARCHIVE"},
        )


    # -- files backups: S3 versions at a moment (point in time), archives only at decommission -----------------
    def _archive_bucket(self) -> str:
        if not self.config.get("archive_bucket"):
            raise PermanentDriverError(f"Storage Gateway pool {self.pool}: config is missing archive_bucket")
        return self.config["archive_bucket"]

    def _wait_for_upload(self, share) -> None:
        """``TransientDriverError`` while the gateway still has data to upload (its cache is dirty)."""
        if self._gateway_arn:
            sgw, arn = self._client("storagegateway"), self._gateway_arn
            cache = gateway_call(f"describe the cache of {arn}", lambda: sgw.describe_cache(GatewayARN=arn))
            if cache.get("CacheDirtyPercentage", 0) > 0:
                raise TransientDriverError(f"gateway {arn} is still uploading to S3; back {share.name} up later")

    def current_versions(self, bucket: str) -> dict[str, dict]:
        """Every object the bucket shows now: key → its latest version (``VersionId``, ``Size``, ``ETag``)."""
        s3 = self._client("s3")

        def collect():
            found = {}
            for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
                for item in page.get("Versions", []):
                    if item.get("IsLatest"):
                        found[item["Key"]] = {"VersionId": item["VersionId"], "Size": item["Size"],
                                              "ETag": item.get("ETag", "")}
            return found

        return cloud_call(f"list the versions in {bucket}", collect)

    def backup_share(self, *, share, label: str, archive: bool = False) -> BackupResult:
        """A files backup. ``archive`` (decommission only): the zip to DEEP_ARCHIVE (``archive_share``). Otherwise
        no data is copied: the bucket is versioned, so the backup is the manifest of the version of every object
        at this moment, kept at ``s3://<archive_bucket>/versions/<share>/<label>.json`` (SSE-KMS, its SHA-256 in
        the object's metadata and the backup's checksum). Versions outlive their replacement for
        ``version_retention_days`` (the bucket's lifecycle rule). Waits (transient) while the gateway is still
        uploading. The same label finds the manifest already written."""
        if archive:
            return self.archive_share(share=share, label=label)
        store, s3 = self._archive_bucket(), self._client("s3")
        key = f"versions/{share.name}/{label}.json"
        try:
            head = cloud_call(f"find manifest {key}", lambda: s3.head_object(Bucket=store, Key=key),
                              not_found=("NoSuchKey", "404"))
            if head.get("Metadata", {}).get("sha256"):
                return self._manifest_result(store, key, head["Metadata"])
        except CloudNotFoundError:
            pass
        self._wait_for_upload(share)
        bucket = self.bucket_name(share)
        objects = self.current_versions(bucket)
        manifest = {"bucket": bucket, "share": share.name, "label": label,
                    "taken_at": timezone.now().isoformat(), "objects": objects}
        body = json.dumps(manifest, sort_keys=True).encode()
        metadata = {"sha256": hashlib.sha256(body).hexdigest(), "files": str(len(objects)),
                    "bytes": str(sum(item["Size"] for item in objects.values())), "taken-at": manifest["taken_at"]}
        cloud_call(
            f"write manifest s3://{store}/{key}",
            lambda: s3.put_object(Bucket=store, Key=key, Body=body, ServerSideEncryption="aws:kms",
                                  SSEKMSKeyId=self.kms_key_arn(), Metadata=metadata,
                                  ChecksumSHA256=base64.b64encode(hashlib.sha256(body).digest()).decode()),
        )
        return self._manifest_result(store, key, metadata)

    def _manifest_result(self, store: str, key: str, metadata: dict) -> BackupResult:
        return BackupResult(
            location=f"s3://{store}/{key}",
            size_bytes=int(metadata.get("bytes", 0)),
            checksum=metadata["sha256"],
            encrypted_with=self.kms_key_arn(),
            extra={"files": int(metadata.get("files", 0)), "taken_at": metadata.get("taken-at", ""),
                   "format": "S3 version manifest"},
        )

    def backup_checksum(self, *, location: str) -> str:
        """A files backup's checksum as it is stored now, computed as ``backup_share`` recorded it: the SHA-256 of the
        version manifest (or of an archive's zip, once S3 has retrieved it from deep storage). ``PermanentDriverError``
        when it is missing or still in deep storage."""
        return s3_object_sha256(self._client("s3"), location)

    def _read_manifest(self, location: str) -> dict:
        """The manifest at ``location``, its SHA-256 checked against the one written with it."""
        store, _, key = location.removeprefix("s3://").partition("/")
        s3 = self._client("s3")
        response = cloud_call(f"read manifest {location}", lambda: s3.get_object(Bucket=store, Key=key))
        body = response["Body"].read()
        expected = response.get("Metadata", {}).get("sha256", "")
        if hashlib.sha256(body).hexdigest() != expected:
            raise PermanentDriverError(f"files backup {location} changed since it was taken: not restored")
        return json.loads(body)

    def restore_share(self, *, share, location: str) -> None:
        """Bring the share back to the moment of the backup at ``location`` (a version manifest): every object
        whose current version differs gets the recorded version copied over it, every object that did not
        exist then is deleted (a delete marker: the newer data stays recoverable as a version), then the
        gateway's cache is refreshed. Every recorded version is checked to exist before anything changes
        (``PermanentDriverError`` naming the first missing one). Safe to repeat. A deep archive (decommission)
        is not restored here: it needs S3's hours-long retrieval first."""
        if not location.endswith(".json"):
            raise PermanentDriverError(f"{location} is a deep archive: request its retrieval from S3 first")
        manifest = self._read_manifest(location)
        bucket, s3 = self.bucket_name(share), self._client("s3")
        if manifest["bucket"] != bucket:
            raise PermanentDriverError(f"files backup {location} is of {manifest['bucket']}, not of {bucket}")
        wanted: dict[str, dict] = manifest["objects"]
        for key, item in wanted.items():
            cloud_call(f"find {key} version {item['VersionId']}",
                       lambda key=key, item=item: s3.head_object(Bucket=bucket, Key=key, VersionId=item["VersionId"]))
        current = self.current_versions(bucket)
        kms_key = self.kms_key_arn()
        for key, item in wanted.items():
            if current.get(key, {}).get("VersionId") == item["VersionId"]:
                continue
            cloud_call(
                f"restore s3://{bucket}/{key}",
                lambda key=key, item=item: s3.copy_object(
                    Bucket=bucket, Key=key, CopySource={"Bucket": bucket, "Key": key, "VersionId": item["VersionId"]},
                    ServerSideEncryption="aws:kms", SSEKMSKeyId=kms_key,
                ),
            )
        extra = [{"Key": key} for key in current if key not in wanted]
        for start in range(0, len(extra), 1000):
            cloud_call(f"remove newer files from {bucket}", lambda start=start: s3.delete_objects(
                Bucket=bucket, Delete={"Objects": extra[start:start + 1000], "Quiet": True}))
        if self._gateway_arn:
            found = self.find_file_share(self._gateway_arn, bucket)
            if found is not None:
                sgw = self._client("storagegateway")
                gateway_call(
                    f"refresh the gateway cache of {bucket}",
                    lambda: sgw.refresh_cache(FileShareARN=found["FileShareARN"], FolderList=["/"], Recursive=True),
                )

    def share_listing(self, *, share) -> dict[str, str]:
        """What the share holds now, as the restore plan counts it: key → ``file`` (folder markers left out)."""
        return {key: "file" for key, item in self.current_versions(self.bucket_name(share)).items()
                if not (key.endswith("/") and item["Size"] == 0)}

    def delete_backup(self, *, location: str) -> None:
        """Retention: delete every version of a manifest or an archive in the archive bucket; absent is fine.
        (The data versions a manifest names expire by the share bucket's lifecycle rule.)"""
        if not location.startswith("s3://"):
            raise PermanentDriverError(f"{location} is not one of this driver's backups")
        store, _, key = location.removeprefix("s3://").partition("/")
        s3 = self._client("s3")

        def delete_every_version():
            listed = s3.list_object_versions(Bucket=store, Prefix=key)
            versions = [{"Key": item["Key"], "VersionId": item["VersionId"]}
                        for item in listed.get("Versions", []) + listed.get("DeleteMarkers", []) if item["Key"] == key]
            if versions:
                s3.delete_objects(Bucket=store, Delete={"Objects": versions, "Quiet": True})

        try:
            cloud_call(f"delete backup {location}", delete_every_version, not_found=("NoSuchBucket",))
        except CloudNotFoundError:
            pass
