"""Azure Files as a storage pool: one storage account; one file share (with a quota) per slot.

Pool config (no secrets):

- ``subscription_id``, ``resource_group``, ``account_name`` (the storage account): required;
- ``location`` (default: the region's location), ``sku`` (default ``Standard_LRS``),
  ``share_quota_gib`` (default 100);
- ``hub_address``: the hub's public address, always kept in the account firewall (for archiving);
- ``archive_account`` (the deep-storage account), ``archive_resource_group`` (default ``resource_group``),
  ``archive_container`` (default ``<prefix>-archive``): where ``archive_share`` puts its zips.

The firewall is **account-level**: Azure Files has no per-share network rule, so ``set_firewall`` keeps
the account's ``ipRules`` equal to the firewall addresses of every share of the pool (this share's new one
included) plus ``hub_address``, with everything else denied. An address allowed for one share therefore
reaches the account's other shares at the network level; what keeps instances apart there is the
storage credential each is given. Give an instance that needs network-level isolation a dedicated pool.

Archiving copies file *data*, which the management plane cannot do: the archive container is created
through ARM here, and the copy uses the data-plane packages ``azure-storage-file-share`` and
``azure-storage-blob`` when they are installed, else ``PermanentDriverError`` names them.
"""
from __future__ import annotations

import hashlib
import re
import tempfile
import zipfile

from azure.mgmt.storage import StorageManagementClient
from azure.mgmt.storage.models import (
    BlobContainer,
    FileShare,
    IPRule,
    NetworkRuleSet,
    Sku,
    StorageAccountCreateParameters,
    StorageAccountUpdateParameters,
)

from provisioning.drivers.base import (
    BackupResult,
    Capabilities,
    PermanentDriverError,
    StorageDriver,
    TransientDriverError,
    resource_prefix,
)
from provisioning.drivers.cloud_retry import (
    CloudConflictError,
    CloudNotFoundError,
    azure_client,
    cloud_call,
    require_config,
)

REQUIRED_CONFIG = ("subscription_id", "resource_group", "account_name")


class AzureFilesStorageDriver(StorageDriver):
    """File shares in one storage account; every ARM call through ``cloud_call``."""

    provider = "azure_files"
    label = "Azure Files"
    clouds = ("azure",)
    default_for_clouds = ("azure",)
    lead_time_hours = 0.5
    host_config_keys = ("account_name",)
    # Shares live inside the storage account (no new host); archives are kept by the account's own policies.
    capabilities = Capabilities()

    def derived_config(self) -> dict:
        """A new pool's storage account: 3–24 lowercase letters and digits, unique per pool (``<prefix>p<id>``,
        its end kept when too long)."""
        return {"account_name": re.sub(r"[^a-z0-9]", "", f"{resource_prefix()}p{self.pool.pk}".lower())[-24:]}

    def __init__(self, pool, *, credential=None, transport=None, polling_interval=None):
        super().__init__(pool)
        self._credential, self._transport, self._polling_interval = credential, transport, polling_interval
        self._client: StorageManagementClient | None = None

    # -- configuration --------------------------------------------------------------------
    @property
    def required(self) -> dict:
        """The required config values; raises ``PermanentDriverError`` naming every missing one."""
        return require_config(self.config, REQUIRED_CONFIG, where=f"Azure Files pool {self.pool}")

    @property
    def client(self) -> StorageManagementClient:
        if self._client is None:
            self._client = azure_client(
                StorageManagementClient,
                self.required["subscription_id"],
                credential=self._credential,
                transport=self._transport,
                polling_interval=self._polling_interval,
            )
        return self._client

    def _data_credential(self):
        """The credential of data-plane calls: the injected one, else ``DefaultAzureCredential``."""
        if self._credential is None:
            from azure.identity import DefaultAzureCredential

            self._credential = DefaultAzureCredential()
        return self._credential

    def _location(self) -> str:
        location = self.config.get("location") or self.pool.reef.region.location
        if not location:
            raise PermanentDriverError(f"Azure Files pool {self.pool}: no location (config 'location' or region)")
        return location

    def _quota(self) -> int:
        return int(self.config.get("share_quota_gib", 100))

    def endpoint(self, share) -> str:
        """``azurefile://<account>.file.core.windows.net/<share>``: the manifests mount it as an azureFile volume."""
        return f"azurefile://{self.required['account_name']}.file.core.windows.net/{share.name}"

    def _network_rules(self, addresses) -> NetworkRuleSet:
        allowed = {address for address in addresses if address}
        if self.config.get("hub_address"):
            allowed.add(self.config["hub_address"])
        return NetworkRuleSet(
            default_action="Deny",
            bypass="AzureServices",
            ip_rules=[IPRule(ip_address_or_range=address, action="Allow") for address in sorted(allowed)],
        )

    # -- pool -----------------------------------------------------------------------------
    def provision_pool(self) -> dict:
        """Create the storage account (HTTPS only, TLS 1.2, no public blobs, network default deny), or find it.

        An existing account is returned untouched, so a repeat never resets its firewall rules.
        """
        s = self.required
        try:
            account = cloud_call(
                f"read storage account {s['account_name']}",
                lambda: self.client.storage_accounts.get_properties(s["resource_group"], s["account_name"]),
            )
        except CloudNotFoundError:
            parameters = StorageAccountCreateParameters(
                sku=Sku(name=self.config.get("sku", "Standard_LRS")),
                kind="StorageV2",
                location=self._location(),
                enable_https_traffic_only=True,
                minimum_tls_version="TLS1_2",
                allow_blob_public_access=False,
                network_rule_set=self._network_rules([]),
                tags={"cellhub-pool": str(self.pool.pk)},
            )
            account = cloud_call(
                f"create storage account {s['account_name']}",
                lambda: self.client.storage_accounts.begin_create(
                    s["resource_group"], s["account_name"], parameters
                ).result(),
            )
        return {"external_id": account.id, "config": {}}

    def delete_pool(self) -> None:
        """Delete the storage account with every share in it; absent is fine."""
        s = self.required
        try:
            cloud_call(
                f"delete storage account {s['account_name']}",
                lambda: self.client.storage_accounts.delete(s["resource_group"], s["account_name"]),
            )
        except CloudNotFoundError:
            pass

    # -- shares ---------------------------------------------------------------------------
    def _create_file_share(self, name: str, quota: int) -> None:
        s = self.required
        try:
            cloud_call(
                f"create file share {name}",
                lambda: self.client.file_shares.create(
                    s["resource_group"], s["account_name"], name, FileShare(share_quota=quota, enabled_protocols="SMB")
                ),
            )
        except CloudConflictError as conflict:
            if conflict.code == "ShareBeingDeleted":
                raise TransientDriverError(f"file share {name} is still being deleted by Azure; retry later") from None
            # Another worker created it a moment ago: it exists, which is what was asked.

    def create_share(self, *, share) -> str:
        """Create the file share with the pool's quota (or find it); returns its endpoint."""
        if not self.share_exists(share=share):
            self._create_file_share(share.name, self._quota())
        return self.endpoint(share)

    def set_firewall(self, *, share, address: str) -> None:
        """Allow ``address`` for this share (empty: remove it). Account-level: see the module's docstring.

        The account's ``ipRules`` become the firewall addresses of the pool's other shares, plus this one.
        """
        s = self.required
        others = share.pool.shares.exclude(pk=share.pk).exclude(firewall_address="")
        addresses = [*others.values_list("firewall_address", flat=True), address]
        rules = self._network_rules(addresses)
        cloud_call(
            f"set the firewall of storage account {s['account_name']}",
            lambda: self.client.storage_accounts.update(
                s["resource_group"], s["account_name"], StorageAccountUpdateParameters(network_rule_set=rules)
            ),
        )

    def share_exists(self, *, share) -> bool:
        s = self.required
        try:
            cloud_call(
                f"read file share {share.name}",
                lambda: self.client.file_shares.get(s["resource_group"], s["account_name"], share.name),
            )
        except CloudNotFoundError:
            return False
        return True

    def delete_share(self, *, share) -> None:
        """Delete the file share and its snapshots; absent is fine."""
        s = self.required
        try:
            cloud_call(
                f"delete file share {share.name}",
                lambda: self.client.file_shares.delete(
                    s["resource_group"], s["account_name"], share.name, include="snapshots"
                ),
            )
        except CloudNotFoundError:
            pass

    def list_shares(self) -> list[str]:
        s = self.required
        return sorted(
            cloud_call(
                f"list file shares of {s['account_name']}",
                lambda: [item.name for item in self.client.file_shares.list(s["resource_group"], s["account_name"])],
            )
        )

    def scrub_share(self, *, share) -> None:
        """Delete the file share (with its snapshots) and create it again: empty by construction, same quota.

        Raises ``TransientDriverError`` while Azure is still deleting the old share (a retry then succeeds).
        """
        s = self.required
        quota = self._quota()
        try:
            existing = cloud_call(
                f"read file share {share.name}",
                lambda: self.client.file_shares.get(s["resource_group"], s["account_name"], share.name),
            )
            quota = existing.share_quota or quota
        except CloudNotFoundError:
            pass
        self.delete_share(share=share)
        self._create_file_share(share.name, quota)

    # -- archive --------------------------------------------------------------------------
    def archive_container(self) -> tuple[str, str, str]:
        """(resource group, account, container) of the deep storage; raises if no ``archive_account``."""
        account = self.config.get("archive_account")
        if not account:
            raise PermanentDriverError(f"Azure Files pool {self.pool}: config is missing archive_account")
        group = self.config.get("archive_resource_group") or self.required["resource_group"]
        return group, account, self.config.get("archive_container") or f"{resource_prefix()}-archive"

    def ensure_archive_container(self) -> str:
        """Create the private archive container in the deep-storage account (or find it); returns its URL."""
        group, account, container = self.archive_container()
        try:
            cloud_call(
                f"read archive container {container}",
                lambda: self.client.blob_containers.get(group, account, container),
            )
        except CloudNotFoundError:
            try:
                cloud_call(
                    f"create archive container {container} in {account}",
                    lambda: self.client.blob_containers.create(
                        group, account, container, BlobContainer(public_access="None")
                    ),
                )
            except CloudConflictError:
                pass
        return f"https://{account}.blob.core.windows.net/{container}"

    def archive_share(self, *, share, label: str) -> BackupResult:
        """Zip every file of the share into ``<container>/<share>/<label>.zip`` at the Archive tier.

        The container is created through ARM; the copy needs ``azure-storage-file-share`` and
        ``azure-storage-blob`` (``PermanentDriverError`` names them when missing). The same label
        overwrites the same blob, so a repeat is harmless.
        """
        container_url = self.ensure_archive_container()
        try:
            from azure.storage.blob import BlobClient, StandardBlobTier
            from azure.storage.fileshare import ShareClient
        except ImportError:
            raise PermanentDriverError(
                "Azure Files archive: copying file data needs the packages azure-storage-file-share and "
                "azure-storage-blob (the management plane cannot read files); install them on the worker"
            ) from None
        credential = self._data_credential()
        account = self.required["account_name"]
        share_client = ShareClient(
            account_url=f"https://{account}.file.core.windows.net",
            share_name=share.name,
            credential=credential,
            token_intent="backup",
        )
        blob_name = f"{share.name}/{label}.zip"
        digest = hashlib.sha256()
        with tempfile.TemporaryFile() as spool:
            with zipfile.ZipFile(spool, "w", compression=zipfile.ZIP_DEFLATED) as archive:
                for path in _walk_share(share_client, ""):
                    data = cloud_call(
                        f"read {path} from file share {share.name}",
                        lambda path=path: share_client.get_file_client(path).download_file().readall(),
                    )
                    archive.writestr(path, data)
            size = spool.tell()
            spool.seek(0)
            for chunk in iter(lambda: spool.read(1 << 20), b""):
                digest.update(chunk)
            spool.seek(0)
            group, archive_account, container = self.archive_container()
            blob = BlobClient(
                account_url=f"https://{archive_account}.blob.core.windows.net",
                container_name=container,
                blob_name=blob_name,
                credential=credential,
            )
            cloud_call(
                f"upload archive {blob_name}",
                lambda: blob.upload_blob(
                    spool,
                    overwrite=True,
                    standard_blob_tier=StandardBlobTier.ARCHIVE,
                    metadata={"sha256": digest.hexdigest(), "share": share.name, "label": label},
                ),
            )
        return BackupResult(
            location=f"{container_url}/{blob_name}",
            size_bytes=size,
            checksum=digest.hexdigest(),
            encrypted_with="Azure Storage service-side encryption",
            extra={"tier": "Archive"},
        )


def _walk_share(share_client, directory: str):
    """Paths of every file under ``directory`` of a file share, depth first, sorted."""
    directory_client = share_client.get_directory_client(directory)
    items = sorted(directory_client.list_directories_and_files(), key=lambda item: item["name"])
    for item in items:
        path = f"{directory}/{item['name']}" if directory else item["name"]
        if item["is_directory"]:
            yield from _walk_share(share_client, path)
        else:
            yield path
