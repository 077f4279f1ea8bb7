"""Azure Files as a storage pool: one storage account; one file share (with a quota) per slot.

Pool config (no secrets):

- ``subscription_id``, ``resource_group``, ``account_name`` (the storage account): required;
- ``location`` (default: the region's location), ``sku`` (default ``Standard_LRS``),
  ``share_quota_gib`` (default 100);
- ``hub_address``: the hub's public address, always kept in the account firewall (for archiving);
- ``archive_account`` (the deep-storage account), ``archive_resource_group`` (default ``resource_group``),
  ``archive_container`` (default ``<prefix>-archive``): where ``archive_share`` puts its zips.

The firewall is **account-level**: Azure Files has no per-share network rule, so ``set_firewall`` adds the
share's address (and ``hub_address``) to the account's ``ipRules`` and removes the share's previous address when
no other share of the pool still needs it, with everything else denied. It reads the account's rule set first and
changes only those addresses: rules operators added (other IP rules, virtual network rules, resource access
rules, the bypass) are kept as they are. An address allowed for one share therefore
reaches the account's other shares at the network level; what keeps instances apart there is the
storage credential each is given. Give an instance that needs network-level isolation a dedicated pool.

Backups are **share snapshots** (``backup_share``): read-only point-in-time copies Azure keeps inside the
account, made in a second, restored file by file (``restore_share``) and deleted by retention
(``delete_backup``). Only a decommission's archive leaves the account: a zip in the ``archive_account``'s container
at the Archive tier (``archive_share``), restorable too after rehydration. Copying file *data* goes through the
data-plane packages ``azure-storage-file-share`` and ``azure-storage-blob``.

The pods mount the share as an ``azureFile`` volume, which reads the account's name and key from the instance's
Secret ``<name>-storage``: ``mount_credentials`` fetches the key through ARM (``listKeys``) for the compute
driver; the hub never stores it.
"""
from __future__ import annotations

import hashlib
import io
import re
import tempfile
import zipfile
from urllib.parse import parse_qs, urlparse

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
from azure.storage.blob import BlobClient, StandardBlobTier
from azure.storage.fileshare import ShareClient

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
    # Shares live inside the storage account (no new host); snapshots and archives are restored and deleted here.
    capabilities = Capabilities(file_restore=True, backup_deletion=True)

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

    def _network_rules(self, addresses, current: NetworkRuleSet | None = None, remove=()) -> NetworkRuleSet:
        """``current`` with ``remove`` taken out of its IP rules and ``addresses`` (and the hub) added; every other
        rule of ``current`` (operators') kept; default action Deny."""
        allowed = {address for address in addresses if address}
        if self.config.get("hub_address"):
            allowed.add(self.config["hub_address"])
        kept = [rule for rule in ((current.ip_rules if current else None) or [])
                if rule.ip_address_or_range not in set(remove) | allowed]
        rules = kept + [IPRule(ip_address_or_range=address, action="Allow") for address in sorted(allowed)]
        operators = {}
        if current is not None and current.virtual_network_rules:
            operators["virtual_network_rules"] = current.virtual_network_rules
        if current is not None and current.resource_access_rules:
            operators["resource_access_rules"] = current.resource_access_rules
        return NetworkRuleSet(
            default_action="Deny",
            bypass=(current.bypass if current and current.bypass else "AzureServices"),
            ip_rules=sorted(rules, key=lambda rule: rule.ip_address_or_range),
            **operators,
        )

    def _clients_kwargs(self) -> dict:
        return {"transport": self._transport} if self._transport is not None else {}

    def _share_client(self, share_name: str, snapshot: str | None = None) -> ShareClient:
        return ShareClient(
            account_url=f"https://{self.required['account_name']}.file.core.windows.net",
            share_name=share_name,
            snapshot=snapshot,
            credential=self._data_credential(),
            token_intent="backup",
            retry_total=0,
            **self._clients_kwargs(),
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

        Read-modify-write: the account's current rule set is read, the share's previous address
        (``share.firewall_address``) removed unless another share of the pool still has it, the addresses of the
        pool's shares and this one added; operators' rules stay.
        """
        s = self.required
        others = list(share.pool.shares.exclude(pk=share.pk).exclude(firewall_address="")
                      .values_list("firewall_address", flat=True))
        account = cloud_call(
            f"read the firewall of storage account {s['account_name']}",
            lambda: self.client.storage_accounts.get_properties(s["resource_group"], s["account_name"]),
        )
        previous = share.firewall_address if share.firewall_address not in (*others, address) else ""
        rules = self._network_rules([*others, address], account.network_rule_set, remove=[previous] if previous else [])
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

    def mount_credentials(self, *, share) -> dict[str, str]:
        """The account's name and first key, as the ``azureFile`` volume reads them from ``<name>-storage``.
        Fetched through ARM (``listKeys``) on every call, so a rotated key reaches the next deploy."""
        s = self.required
        keys = cloud_call(
            f"read the keys of storage account {s['account_name']}",
            lambda: self.client.storage_accounts.list_keys(s["resource_group"], s["account_name"]),
        )
        # ``keys`` is also a Mapping method on the SDK's models: read the field by its wire name.
        values = [key.get("value") for key in (keys.get("keys") or []) if key.get("value")]
        if not values:
            raise PermanentDriverError(f"storage account {s['account_name']} returned no key (shared keys disabled?)")
        return {"azurestorageaccountname": s["account_name"], "azurestorageaccountkey": values[0]}

    # -- snapshots ------------------------------------------------------------------------
    def snapshot_location(self, share_name: str, snapshot: str) -> str:
        """Azure's own URL of a share snapshot."""
        return f"https://{self.required['account_name']}.file.core.windows.net/{share_name}?sharesnapshot={snapshot}"

    def _parse_snapshot(self, location: str) -> tuple[str, str] | None:
        """(share name, snapshot time) of one of this pool's snapshot locations; None for an archive's."""
        parsed = urlparse(location)
        if parsed.hostname != f"{self.required['account_name']}.file.core.windows.net":
            return None
        snapshot = (parse_qs(parsed.query).get("sharesnapshot") or [""])[0]
        if not snapshot:
            raise PermanentDriverError(f"{location!r} is no share snapshot")
        return parsed.path.strip("/"), snapshot

    def backup_share(self, *, share, label: str, archive: bool = False) -> BackupResult:
        """A share snapshot labelled ``label`` (found again, not made twice, on a repeat); with ``archive`` (a
        decommission) a zip at the Archive tier instead (``archive_share``). ``checksum`` is the snapshot's time,
        its identity in Azure."""
        if archive:
            return self.archive_share(share=share, label=label)
        s = self.required
        existing = cloud_call(
            f"list snapshots of file share {share.name}",
            lambda: [
                item
                for item in self.client.file_shares.list(s["resource_group"], s["account_name"], expand="snapshots")
                if item.name == share.name and item.snapshot_time and (item.metadata or {}).get("cellhublabel") == label
            ],
        )
        if existing:
            snapshot = existing[0]
        else:
            snapshot = cloud_call(
                f"snapshot file share {share.name}",
                lambda: self.client.file_shares.create(
                    s["resource_group"], s["account_name"], share.name, FileShare(metadata={"cellhublabel": label}),
                    expand="snapshots",
                ),
            )
        if not snapshot.snapshot_time:
            raise TransientDriverError(f"the snapshot of file share {share.name} reports no time yet")
        taken = snapshot.snapshot_time
        stamp = taken.strftime("%Y-%m-%dT%H:%M:%S.0000000Z")
        return BackupResult(
            location=self.snapshot_location(share.name, stamp),
            size_bytes=0,
            checksum=stamp,
            encrypted_with="Azure Storage service-side encryption",
            extra={"kind": "share snapshot", "label": label, "taken_at": taken.isoformat()},
        )

    def _check_snapshot(self, share_name: str, snapshot: str) -> None:
        s = self.required
        try:
            cloud_call(
                f"read snapshot {snapshot} of file share {share_name}",
                lambda: self.client.file_shares.get(
                    s["resource_group"], s["account_name"], share_name, x_ms_snapshot=snapshot
                ),
            )
        except CloudNotFoundError:
            raise PermanentDriverError(f"snapshot {snapshot} of file share {share_name} no longer exists") from None

    def restore_share(self, *, share, location: str) -> None:
        """Make the share's content that of the backup at ``location``: a snapshot of this pool's share, or an
        archive zip (its SHA-256 checked against the one recorded with it). Files the backup lacks are deleted,
        the others written; safe to repeat. Raises ``PermanentDriverError`` when the backup is gone, another
        share's, or does not match its checksum, before the share is touched; ``TransientDriverError`` while an
        archived zip is being rehydrated (a retry after rehydration restores it)."""
        snapshot = self._parse_snapshot(location)
        if snapshot is not None:
            share_name, stamp = snapshot
            if share_name != share.name:
                raise PermanentDriverError(f"{location} is a snapshot of {share_name}, not of {share.name}")
            self._check_snapshot(share_name, stamp)
            source = self._share_client(share_name, snapshot=stamp)
            entries = list(_walk_share(source, "", directories=True))

            def read(path):
                return cloud_call(f"read {path} from snapshot {stamp}",
                                  lambda: source.get_file_client(path).download_file().readall())
        else:
            archive = zipfile.ZipFile(io.BytesIO(self._read_archive(location)))
            names = sorted(name for name in archive.namelist() if not name.endswith("/"))
            folders = {"/".join(name.split("/")[:depth]) + "/" for name in names for depth in
                       range(1, name.count("/") + 1)}
            entries = sorted(folders) + names

            def read(path):
                return archive.read(path)
        self._replace_content(share, entries, read)

    def _read_archive(self, location: str) -> bytes:
        parsed = urlparse(location)
        account = (parsed.hostname or "").split(".")[0]
        _, archive_account, container = self.archive_container()
        container_path, _, blob_name = parsed.path.lstrip("/").partition("/")
        if account != archive_account or container_path != container:
            raise PermanentDriverError(f"{location} is not in this pool's archive container")
        blob = BlobClient(
            account_url=f"https://{account}.blob.core.windows.net", container_name=container, blob_name=blob_name,
            credential=self._data_credential(), retry_total=0, **self._clients_kwargs(),
        )
        properties = cloud_call(f"read archive {blob_name}", blob.get_blob_properties)
        if (properties.blob_tier or "").lower() == "archive":
            if not properties.archive_status:
                cloud_call(f"rehydrate archive {blob_name}",
                           lambda: blob.set_standard_blob_tier("Cool", rehydrate_priority="Standard"))
            raise TransientDriverError(f"archive {blob_name} is being rehydrated from the Archive tier; retry later")
        data = cloud_call(f"download archive {blob_name}", lambda: blob.download_blob().readall())
        expected = (properties.metadata or {}).get("sha256", "")
        if hashlib.sha256(data).hexdigest() != expected:
            raise PermanentDriverError(f"archive {blob_name} does not match its recorded SHA-256; not restored")
        return data

    def _replace_content(self, share, entries: list[str], read) -> None:
        """Write every entry (``dir/`` or a file path) into the live share; delete what the live share has beyond."""
        live = self._share_client(share.name)
        wanted = set(entries)
        current = list(_walk_share(live, "", directories=True))
        # Files first, then folders deepest first: a folder is deleted only once empty.
        for path in sorted((p for p in current if p not in wanted), key=lambda p: (p.endswith("/"), -p.count("/"), p)):
            if path.endswith("/"):
                cloud_call(f"delete folder {path}", lambda path=path: live.get_directory_client(path[:-1])
                           .delete_directory())
            else:
                cloud_call(f"delete {path}", lambda path=path: live.get_file_client(path).delete_file())
        for path in entries:
            if path.endswith("/"):
                if path not in current:
                    cloud_call(f"create folder {path}",
                               lambda path=path: live.get_directory_client(path[:-1]).create_directory())
                continue
            data = read(path)
            cloud_call(f"write {path}", lambda path=path, data=data: live.get_file_client(path).upload_file(data))

    def backup_checksum(self, *, location: str) -> str:
        """What ``backup_share`` recorded as the checksum, as the backup is now: a snapshot's time once Azure still
        has that snapshot; an archive's SHA-256 computed from its bytes (``TransientDriverError`` while it is in the
        Archive tier: it is rehydrated first). Raises ``PermanentDriverError`` when the backup is gone."""
        snapshot = self._parse_snapshot(location)
        if snapshot is not None:
            self._check_snapshot(*snapshot)
            return snapshot[1]
        return hashlib.sha256(self._read_archive(location)).hexdigest()

    def delete_backup(self, *, location: str) -> None:
        """Delete a share snapshot or an archive zip; absent is fine."""
        s = self.required
        snapshot = self._parse_snapshot(location)
        try:
            if snapshot is not None:
                share_name, stamp = snapshot
                cloud_call(
                    f"delete snapshot {stamp} of file share {share_name}",
                    lambda: self.client.file_shares.delete(
                        s["resource_group"], s["account_name"], share_name, x_ms_snapshot=stamp
                    ),
                )
                return
            parsed = urlparse(location)
            _, archive_account, container = self.archive_container()
            container_path, _, blob_name = parsed.path.lstrip("/").partition("/")
            if (parsed.hostname or "").split(".")[0] != archive_account or container_path != container:
                raise PermanentDriverError(f"{location} is not in this pool's archive container")
            blob = BlobClient(
                account_url=f"https://{archive_account}.blob.core.windows.net", container_name=container,
                blob_name=blob_name, credential=self._data_credential(), retry_total=0, **self._clients_kwargs(),
            )
            cloud_call(f"delete archive {blob_name}", blob.delete_blob)
        except CloudNotFoundError:
            pass

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

        The container is created through ARM, the copy goes through the data plane. The same label overwrites the
        same blob, so a repeat is harmless; a retried upload rewinds to the first byte.
        """
        container_url = self.ensure_archive_container()
        credential = self._data_credential()
        share_client = self._share_client(share.name)
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
                retry_total=0,
                **self._clients_kwargs(),
            )

            def upload():
                spool.seek(0)  # a retried upload starts from the first byte again
                return blob.upload_blob(
                    spool,
                    length=size,
                    overwrite=True,
                    standard_blob_tier=StandardBlobTier.ARCHIVE,
                    metadata={"sha256": digest.hexdigest(), "share": share.name, "label": label},
                )

            cloud_call(f"upload archive {blob_name}", upload)
        return BackupResult(
            location=f"{container_url}/{blob_name}",
            size_bytes=size,
            checksum=digest.hexdigest(),
            encrypted_with="Azure Storage service-side encryption",
            extra={"tier": "Archive"},
        )


def _walk_share(share_client, directory: str, *, directories: bool = False):
    """Paths of every file under ``directory`` of a file share, depth first, sorted."""
    directory_client = share_client.get_directory_client(directory)
    items = sorted(directory_client.list_directories_and_files(), key=lambda item: item["name"])
    for item in items:
        path = f"{directory}/{item['name']}" if directory else item["name"]
        if item["is_directory"]:
            if directories:
                yield path + "/"
            yield from _walk_share(share_client, path, directories=directories)
        else:
            yield path
