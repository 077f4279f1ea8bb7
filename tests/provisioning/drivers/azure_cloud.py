"""A stateful Azure for end-to-end tests: Resource Manager and the Files/Blob data planes behind one azure-core
transport, so the real SDKs (azure-mgmt-sql, -storage, -monitor, azure-storage-file-share, -blob) run unchanged.

Resource Manager: a PUT stores the resource (servers, elastic pools, databases and storage accounts as a
long-running operation: 201/202 + ``Azure-AsyncOperation``, polled ``InProgress`` then ``Succeeded``), GET reads
it, DELETE removes it (404 when absent), a GET of a collection lists its children. Databases get a ``databaseId``
and an ``earliestRestoreDate``; a share PUT with ``$expand=snapshots`` makes a snapshot holding a copy of the
share's files; ``listKeys`` answers a key; a metric alert has a ``status``; Azure DNS record sets
(``dnsZones/<zone>/<A|AAAA|CNAME>/<name>``) carry their ``type`` and ``fqdn``, list under ``recordsets`` and
answer a DELETE of an absent one with 204, as Azure DNS does. A database's BACPAC export (POST
``databases/<db>/export``) is a long-running operation whose success writes the blob at its ``storageUri`` (see
``_export``; one made to fail leaves a partial blob behind; ``hold_exports`` keeps exports ``InProgress``). The data
planes keep files per share (and per snapshot) and blobs per container.

AKS: a managed cluster PUT is a long-running operation that ends ``Succeeded`` (the cluster gets an ``fqdn`` and
``provisioningState``), or ``Failed`` for a name in ``failing_clusters`` (the failed cluster stays, as Azure leaves
it); its DELETE is one too; ``listClusterUserCredential`` answers a kubeconfig (base64) whose server is
``cluster_servers[name]`` when the test gives one (a local Kubernetes API; each new cluster takes the next of
``new_cluster_servers`` if any), else the cluster's ``https://<fqdn>``. A new cluster gets an outbound public IP
(a ``publicIPAddresses`` resource with an ``ipAddress``) named in its load balancer profile.

``fail(method, path_regex, times=1, status=None, code="BadRequest")`` makes the next matching calls fail as Azure
refuses a request (status 400 on Resource Manager, 500 on the data planes, unless given), and
``fail_lro(method, path_regex)`` makes a long-running operation end ``Failed`` (the resource stays, in a failed
state, as ARM leaves it), so a test can break each step. ``state()`` is everything that exists, for a test to
compare before and after. Everything is recorded in ``requests`` (as ``ArmTransport`` does); pollers sleep through
``sleep``, which records the delay instead of waiting.
"""
from __future__ import annotations

import base64
import copy
import itertools
import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from urllib.parse import parse_qs, unquote, urlparse
from xml.sax.saxutils import escape

from tests.provisioning.drivers.azure_transport import OPERATIONS_HOST, ArmTransport, Recorded

COLLECTIONS = {"databases", "firewallRules", "shares", "metricAlerts", "elasticPools", "containers",
               "storageAccounts", "servers", "managedClusters"}
LRO_PUTS = {"servers", "elasticPools", "databases", "storageAccounts", "managedClusters"}
LRO_DELETES = {"servers", "elasticPools", "databases", "managedClusters"}
DNS_TYPES = {"A", "AAAA", "CNAME"}


class _Stream:
    """A body stream as azure-core hands it out: iterable, and the storage SDKs hang attributes on it."""

    def __init__(self, content: bytes, pipeline=None, response=None):
        self._chunks = iter([content] if content else [])
        # What azure-core's StreamDownloadGenerator carries (the blob downloader reads them).
        self.pipeline, self.response, self.content_length = pipeline, response, len(content)
        self.request = getattr(response, "request", None)

    def __len__(self):
        return self.content_length

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._chunks)


class AzureCloud(ArmTransport):
    def __init__(self):
        super().__init__()
        self.resources: dict[str, dict] = {}  # lower-cased ARM path → resource
        self.files: dict[tuple[str, str], dict[str, bytes]] = {}  # (account, share) → {path or "dir/": bytes}
        self.snapshots: dict[tuple[str, str, str], dict[str, bytes]] = {}  # (account, share, stamp) → files
        self.blobs: dict[tuple[str, str, str], dict] = {}  # (account, container, blob) → {data, metadata, tier}
        self.failures: list[list] = []  # [method, regex, times, status, code]
        self.lro_failures: list[list] = []  # [method, regex, times]
        self.failing_clusters: set[str] = set()  # AKS clusters whose creation ends Failed
        self.cluster_servers: dict[str, str] = {}  # AKS cluster name → the API server its kubeconfig names
        self.new_cluster_servers: list[str] = []  # given to new AKS clusters in turn
        self.slept: list[float] = []
        self._on_success: dict[str, object] = {}  # operation → what happens when it ends Succeeded
        self._exports: set[str] = set()  # the operations that are BACPAC exports
        self.hold_exports = False  # while True, BACPAC exports stay InProgress (an export that takes long)
        self._clock = itertools.count(1)

    # -- test API ---------------------------------------------------------------------------
    def fail(self, method: str, path_regex: str, *, times: int = 1, status: int | None = None,
             code: str = "BadRequest"):
        self.failures.append([method.upper(), re.compile(path_regex, re.IGNORECASE), times, status, code])

    def fail_lro(self, method: str, path_regex: str, *, times: int = 1):
        """The next matching long-running operations are accepted, then end ``Failed``."""
        self.lro_failures.append([method.upper(), re.compile(path_regex, re.IGNORECASE), times])

    def state(self) -> dict:
        """A copy of everything that exists: resources, files of shares and snapshots, blobs."""
        return copy.deepcopy({"resources": self.resources, "files": self.files, "snapshots": self.snapshots,
                              "blobs": self.blobs})

    def sleep(self, duration: float) -> None:
        """azure-core's pollers wait through the transport: the wait is recorded, not slept."""
        self.slept.append(duration)

    def arm_paths(self, pattern: str = "") -> list[str]:
        """Stored resource paths (as first written) matching ``pattern``."""
        return sorted(r["id"] for key, r in self.resources.items() if re.search(pattern, r["id"], re.IGNORECASE))

    # -- transport ----------------------------------------------------------------------------
    def send(self, request, **kwargs):
        parsed = urlparse(request.url)
        host = parsed.hostname or ""
        if host.endswith(".file.core.windows.net") or host.endswith(".blob.core.windows.net"):
            return self._data_plane(request, parsed)
        if request.url.startswith(OPERATIONS_HOST):
            operation_id = parsed.path.rsplit("/", 1)[-1]
            states = self._operations[operation_id]
            if self.hold_exports and operation_id in self._exports:
                return self._response(request, 200, {"status": "InProgress"}, {"Retry-After": "1"})
            state = states.pop(0) if len(states) > 1 else states[0]
            if state == "Succeeded" and operation_id in self._on_success:
                self._on_success.pop(operation_id)()
            body = {"status": state}
            if state == "Failed":
                body["error"] = {"code": "InternalServerError", "message": "the test cloud failed the operation"}
            # Poll again soon (``sleep`` does not wait anyway): azure-core reads "0" as unset.
            return self._response(request, 200, body, {"Retry-After": "1"})
        content = request.content if hasattr(request, "content") else request.data
        if isinstance(content, bytes | bytearray):
            content = content.decode()
        body = json.loads(content) if content else None
        self.requests.append(Recorded(request.method, request.url, parsed.path, parse_qs(parsed.query), body))
        failure = self._failure(request.method, parsed.path)
        if failure:
            return failure(request)
        return self._arm(request, parsed, body)

    def _failure(self, method, path):
        for entry in self.failures:
            if entry[2] > 0 and entry[0] == method and entry[1].search(path):
                entry[2] -= 1
                status, code = entry[3], entry[4]
                error = {"error": {"code": code, "message": f"refused by the test cloud: {method} {path}"}}
                return lambda request, data_plane=False: (
                    self._raw(request, status or 500, b"", {"x-ms-error-code": code if status else "InternalError"})
                    if data_plane else self._response(request, status or 400, error))
        return None

    # -- Resource Manager ---------------------------------------------------------------------
    def _lro_fails(self, method, path) -> bool:
        for entry in self.lro_failures:
            if entry[2] > 0 and entry[0] == method and entry[1].search(path):
                entry[2] -= 1
                return True
        return False

    def _lro(self, request, status, body, *, failed=False, on_success=None, export=False):
        operation = f"op{next(self._ids)}"
        if export:
            self._exports.add(operation)
        self._operations[operation] = ["InProgress", "Failed" if failed else "Succeeded"]
        if on_success is not None and not failed:
            self._on_success[operation] = on_success
        headers = {"Azure-AsyncOperation": f"{OPERATIONS_HOST}/{operation}", "Retry-After": "1"}
        return self._response(request, status, body, headers)

    def _arm(self, request, parsed, body):
        path = parsed.path.rstrip("/")
        key = path.lower()
        query = parse_qs(parsed.query)
        method = request.method
        snapshot = request.headers.get("x-ms-snapshot")
        segments = path.split("/")
        name = segments[-1]

        if method == "POST" and name == "listKeys":
            account = segments[-2]
            return self._response(request, 200, {"keys": [
                {"keyName": "key1", "value": f"key-of-{account}==", "permissions": "FULL"}]})
        if method == "POST" and name == "export" and len(segments) > 2 and segments[-3] == "databases":
            return self._export(request, path, key, body or {})
        if method == "POST" and name == "listClusterUserCredential":
            cluster = self.resources.get(key[: -len("/listClusterUserCredential")])
            if cluster is None:
                return self._not_found(request, path)
            return self._response(request, 200, {"kubeconfigs": [
                {"name": "clusterUser", "value": base64.b64encode(self._kubeconfig(cluster).encode()).decode()}]})
        if method == "GET" and name == "status" and "metricAlerts" in segments:
            alert = self.resources.get(key[: -len("/status")])
            if alert is None:
                return self._not_found(request, path)
            return self._response(request, 200, {"value": [{"name": "1", "properties": {
                "status": alert.get("_status", "Healthy"), "timestamp": "2026-03-01T12:00:00Z"}}]})

        if "shares" in segments and (snapshot or query.get("$expand") == ["snapshots"]):
            return self._share_snapshots(request, segments, method, snapshot, query)
        if "dnsZones" in segments:
            dns = self._dns(request, path, key, segments, body)
            if dns is not None:
                return dns

        if method == "GET" and name in COLLECTIONS:
            children = [copy.deepcopy(r) for k, r in sorted(self.resources.items())
                        if k.startswith(key + "/") and k.count("/") == key.count("/") + 1]
            return self._response(request, 200, {"value": [self._public(r) for r in children]})
        if method == "GET":
            found = self.resources.get(key)
            return self._response(request, 200, self._public(found)) if found else self._not_found(request, path)
        if method == "DELETE":
            if key not in self.resources:
                return self._not_found(request, path) if "databases" not in segments else self._response(
                    request, 204, None)
            if segments[-2] in LRO_DELETES and self._lro_fails(method, path):
                return self._lro(request, 202, None, failed=True)  # accepted, then failed: the resource stays
            cluster = segments[-2] == "managedClusters"
            node_group = f"/resourcegroups/mc_{segments[4]}_{name}/".lower() if cluster else None
            for other in [k for k in self.resources
                          if k == key or k.startswith(key + "/") or (node_group and node_group in k)]:
                del self.resources[other]  # a managed cluster takes its node resource group with it
            if "shares" in segments:
                account = segments[segments.index("storageAccounts") + 1]
                self.files.pop((account, name), None)
                for snap in [s for s in self.snapshots if s[:2] == (account, name)]:
                    del self.snapshots[snap]
            if segments[-2] == "storageAccounts":  # its shares, their files and snapshots go with it
                for store in (self.files, self.snapshots):
                    for item in [item for item in store if item[0] == name]:
                        del store[item]
            return self._lro(request, 202, None) if segments[-2] in LRO_DELETES else self._response(request, 200, None)
        if method in ("PUT", "PATCH"):
            existing = self.resources.get(key)
            stored = copy.deepcopy(existing) if existing else {"id": path, "name": name}
            for field, value in (body or {}).items():
                if field == "properties" and isinstance(value, dict):
                    stored.setdefault("properties", {}).update(value)
                else:
                    stored[field] = value
            if segments[-2] == "databases" and existing is None:
                stored.setdefault("properties", {}).update({
                    "databaseId": str(uuid.uuid4()),
                    "earliestRestoreDate": (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "status": "Online",
                })
            if segments[-2] == "servers":
                stored.setdefault("properties", {})["fullyQualifiedDomainName"] = f"{name}.database.windows.net"
            if segments[-2] == "shares":
                account = segments[segments.index("storageAccounts") + 1]
                self.files.setdefault((account, name), {})
            cluster_failed = False
            if segments[-2] == "managedClusters":
                cluster_failed = name in self.failing_clusters
                if existing is None and self.new_cluster_servers:
                    self.cluster_servers[name] = self.new_cluster_servers.pop(0)
                properties = stored.setdefault("properties", {})
                properties["provisioningState"] = "Failed" if cluster_failed else "Succeeded"
                properties["fqdn"] = f"{properties.get('dnsPrefix', name)}-{len(self.resources):04x}.hcp." \
                                     f"{stored.get('location', 'westus2')}.azmk8s.io"
                if existing is None:  # AKS picks the cluster's outbound address: a public IP in its node group
                    ip_id = (f"/subscriptions/{segments[2]}/resourceGroups/MC_{segments[4]}_{name}/providers/"
                             f"Microsoft.Network/publicIPAddresses/{uuid.uuid4()}")
                    address = f"20.60.{len(self.resources) % 250}.{next(self._clock) % 250 + 1}"
                    self.resources[ip_id.lower()] = {"id": ip_id, "name": ip_id.rsplit("/", 1)[-1],
                                                     "properties": {"ipAddress": address}}
                    properties["networkProfile"] = {"outboundType": "loadBalancer", "loadBalancerProfile": {
                        "effectiveOutboundIPs": [{"id": ip_id}]}}
            self.resources[key] = stored
            if method == "PUT" and segments[-2].startswith("backup"):  # retention policies answer 202
                return self._lro(request, 202, None)
            failed = method == "PUT" and segments[-2] in LRO_PUTS and (
                self._lro_fails(method, path) or cluster_failed)
            if failed:  # ARM keeps a resource whose creation failed, in a failed state
                stored.setdefault("properties", {})["provisioningState"] = "Failed"
            elif stored.get("properties", {}).get("provisioningState") == "Failed":
                del stored["properties"]["provisioningState"]
            if method == "PUT" and segments[-2] == "storageAccounts":  # 202, no body: Azure Storage's way
                return self._lro(request, 202, None, failed=failed)
            if method == "PUT" and segments[-2] in LRO_PUTS:
                return self._lro(request, 201 if existing is None else 200, self._public(stored), failed=failed)
            return self._response(request, 200, self._public(stored))
        return self._not_found(request, path)

    def _export(self, request, path, key, body):
        """A BACPAC export (``databases/<db>/export``): 202 + ``Azure-AsyncOperation``; it ends ``Succeeded`` and the
        blob appears at ``storageUri`` when the database exists, the key is the account's (``listKeys``) and the
        container exists, else ``Failed`` with no blob (as the Import/Export service does)."""
        database = self.resources.get(key[: -len("/export")])
        if database is None:
            return self._not_found(request, path)
        target = urlparse(body.get("storageUri", ""))
        account = (target.hostname or "").split(".")[0]
        container, _, blob = unquote(target.path).lstrip("/").partition("/")
        container_suffix = f"/storageaccounts/{account}/blobservices/default/containers/{container}".lower()
        valid = (
            body.get("storageKeyType") == "StorageAccessKey" and body.get("storageKey") == f"key-of-{account}=="
            and bool(blob) and any(k.endswith(container_suffix) for k in self.resources)
            and body.get("administratorLogin") and body.get("administratorLoginPassword")
        )
        failed = self._lro_fails("POST", path) or not valid
        content = f"BACPAC of {database['name']} ({database['properties']['databaseId']})".encode()

        def write(data=content):
            self.blobs[(account, container, blob)] = {"data": data, "metadata": {}, "tier": "Hot"}

        if failed and valid:  # a failed export can leave what it had written so far
            write(content[:6])
        return self._lro(request, 202, None, failed=failed, on_success=write, export=True)

    def _kubeconfig(self, cluster: dict) -> str:
        name = cluster["name"]
        server = self.cluster_servers.get(name) or f"https://{cluster['properties']['fqdn']}:443"
        return (
            "apiVersion: v1\nkind: Config\n"
            f"current-context: {name}\n"
            f"clusters: [{{name: {name}, cluster: {{server: '{server}', certificate-authority-data: 'Q0EK'}}}}]\n"
            f"contexts: [{{name: {name}, context: {{cluster: {name}, user: clusterUser_{name}}}}}]\n"
            f"users: [{{name: clusterUser_{name}, user: {{token: 'aks-user-token-{name}'}}}}]\n"
        )

    def _dns(self, request, path, key, segments, body):
        """Azure DNS record sets; None for what the generic resource handling answers."""
        zone_at = segments.index("dnsZones") + 1
        tail = segments[zone_at + 1:]
        if request.method == "GET" and tail == ["recordsets"]:
            zone_key = key[: -len("/recordsets")]
            children = [r for k, r in sorted(self.resources.items()) if k.startswith(zone_key + "/")]
            return self._response(request, 200, {"value": [self._public(r) for r in children]})
        if len(tail) != 2 or tail[0] not in DNS_TYPES:
            return None
        if request.method == "DELETE" and key not in self.resources:
            return self._response(request, 204, None)
        if request.method == "PUT":
            zone, kind, name = segments[zone_at], tail[0], tail[1]
            stored = {"id": path, "name": name, "type": f"Microsoft.Network/dnszones/{kind}", "etag": "e1",
                      "properties": {**(body or {}).get("properties", {}), "fqdn": f"{name}.{zone}."}}
            self.resources[key] = stored
            return self._response(request, 200, self._public(stored))
        return None

    @staticmethod
    def _public(resource):
        return {k: v for k, v in resource.items() if not k.startswith("_")} if resource else resource

    def _not_found(self, request, path):
        return self._response(request, 404, {"error": {"code": "ResourceNotFound", "message": f"{path} not found"}})

    def _share_snapshots(self, request, segments, method, snapshot, query):
        account = segments[segments.index("storageAccounts") + 1]
        if segments[-1] == "shares":  # list with snapshots
            items = []
            for (acct, share), _ in sorted(self.files.items()):
                if acct == account:
                    items.append({"name": share, "properties": {}})
            for (acct, share, stamp), meta in sorted(self.snapshots.items()):
                if acct == account:
                    items.append({"name": share, "properties": {"snapshotTime": stamp,
                                                                "metadata": meta.get("_metadata", {})}})
            return self._response(request, 200, {"value": items})
        share = segments[-1]
        if method == "PUT":
            stamp = (datetime(2026, 3, 1, tzinfo=UTC) + timedelta(seconds=next(self._clock))).strftime(
                "%Y-%m-%dT%H:%M:%S.0000000Z")
            content = copy.deepcopy(self.files.get((account, share), {}))
            metadata = (json.loads(request.content) if request.content else {}).get("properties", {}).get(
                "metadata", {})
            self.snapshots[(account, share, stamp)] = {**content, "_metadata": metadata}
            return self._response(request, 201, {"name": share, "properties": {"snapshotTime": stamp,
                                                                                "metadata": metadata}})
        if (account, share, snapshot) not in self.snapshots:
            return self._not_found(request, f"{share}@{snapshot}")
        if method == "DELETE":
            del self.snapshots[(account, share, snapshot)]
            return self._response(request, 200, None)
        return self._response(request, 200, {"name": share, "properties": {"snapshotTime": snapshot}})

    # -- data planes ----------------------------------------------------------------------------
    def _raw(self, request, status, content=b"", headers=None):
        from azure.core.rest._http_response_impl import HttpResponseImpl
        from azure.core.utils import CaseInsensitiveDict

        from tests.provisioning.drivers.azure_transport import _Internal

        all_headers = CaseInsensitiveDict({
            "x-ms-request-id": "test", "x-ms-version": "2025-05-05", "ETag": '"0x1"',
            "Last-Modified": format_datetime(datetime(2026, 3, 1, tzinfo=UTC), usegmt=True),
            "Content-Length": str(len(content)),
        })
        all_headers.update(headers or {})
        response = HttpResponseImpl(
            request=request, internal_response=_Internal(), status_code=status, reason="OK" if status < 400 else "Err",
            content_type=all_headers.get("Content-Type"), headers=all_headers,
            stream_download_generator=lambda pipeline=None, response=None, *a, **k: _Stream(
                content, pipeline, response),
        )
        response._content = content
        return response

    def _data_plane(self, request, parsed):
        account = (parsed.hostname or "").split(".")[0]
        query = parse_qs(parsed.query)
        parts = [unquote(p) for p in parsed.path.strip("/").split("/")]
        content = request.content if hasattr(request, "content") else request.data
        if hasattr(content, "read"):
            content = content.read()
        headers = {k.lower(): v for k, v in request.headers.items() if k.lower().startswith("x-ms-")}
        self.requests.append(Recorded(request.method, request.url, parsed.path, query, None, headers))
        failure = self._failure(request.method, parsed.path)
        if failure:
            return failure(request, data_plane=True)
        if ".blob." in parsed.hostname:
            return self._blob(request, account, parts, query, content or b"")
        return self._file(request, account, parts, query, content or b"")

    def _file(self, request, account, parts, query, content):
        share, path = parts[0], "/".join(parts[1:])
        stamp = (query.get("sharesnapshot") or [None])[0]
        files = self.snapshots.get((account, share, stamp)) if stamp else self.files.get((account, share))
        if files is None:
            return self._raw(request, 404, b"", {"x-ms-error-code": "ShareNotFound"})
        method, is_dir = request.method, query.get("restype") == ["directory"]
        if method == "GET" and query.get("comp") == ["list"]:
            prefix = f"{path}/" if path else ""
            entries = []
            for name in sorted(k for k in files if not k.startswith("_")):
                if not name.startswith(prefix) or name == prefix:
                    continue
                rest = name[len(prefix):]
                if rest.endswith("/") and rest.count("/") == 1:
                    entries.append(f"<Directory><Name>{escape(rest[:-1])}</Name><Properties /></Directory>")
                elif "/" not in rest:
                    entries.append(f"<File><Name>{escape(rest)}</Name><Properties><Content-Length>"
                                   f"{len(files[name])}</Content-Length></Properties></File>")
            xml = ('<?xml version="1.0" encoding="utf-8"?><EnumerationResults ServiceEndpoint="https://'
                   f'{account}.file.core.windows.net/" ShareName="{share}" DirectoryPath="{escape(path)}"><Entries>'
                   f'{"".join(entries)}</Entries><NextMarker /></EnumerationResults>')
            return self._raw(request, 200, xml.encode(), {"Content-Type": "application/xml"})
        if method == "PUT" and is_dir:
            files[f"{path}/"] = b""
            return self._raw(request, 201)
        if method == "DELETE" and is_dir:
            if any(k.startswith(f"{path}/") and k != f"{path}/" for k in files):
                return self._raw(request, 409, b"", {"x-ms-error-code": "DirectoryNotEmpty"})
            files.pop(f"{path}/", None)
            return self._raw(request, 202)
        if method == "PUT" and query.get("comp") == ["range"]:
            start = int(request.headers["x-ms-range"].split("=")[1].split("-")[0])
            data = bytearray(files.get(path, b""))
            data[start:start + len(content)] = content
            files[path] = bytes(data)
            return self._raw(request, 201)
        if method == "PUT":
            files[path] = bytes(int(request.headers.get("x-ms-content-length", "0")))
            return self._raw(request, 201)
        if path not in files:
            return self._raw(request, 404, b"", {"x-ms-error-code": "ResourceNotFound"})
        if method == "DELETE":
            del files[path]
            return self._raw(request, 202)
        data = files[path]
        return self._raw(request, 206 if data else 200, data, {
            "Content-Range": f"bytes 0-{max(len(data) - 1, 0)}/{len(data)}", "x-ms-type": "File",
            "Content-Type": "application/octet-stream"})

    def _blob(self, request, account, parts, query, content):
        key = (account, parts[0], "/".join(parts[1:]))
        method = request.method
        if method == "PUT" and query.get("comp") == ["tier"]:
            self.blobs[key]["rehydrating"] = request.headers.get("x-ms-access-tier")
            return self._raw(request, 202)
        if method == "PUT":
            metadata = {k[len("x-ms-meta-"):]: v for k, v in request.headers.items() if k.lower().startswith(
                "x-ms-meta-")}
            self.blobs[key] = {"data": bytes(content), "metadata": metadata,
                               "tier": request.headers.get("x-ms-access-tier", "Hot")}
            return self._raw(request, 201, b"", {"Content-MD5": "AAAAAAAAAAAAAAAAAAAAAA=="})
        blob = self.blobs.get(key)
        if blob is None:
            return self._raw(request, 404, b"", {"x-ms-error-code": "BlobNotFound"})
        if method == "DELETE":
            del self.blobs[key]
            return self._raw(request, 202)
        headers = {"x-ms-blob-type": "BlockBlob", "x-ms-access-tier": blob["tier"],
                   "Content-Type": "application/octet-stream",
                   **{f"x-ms-meta-{k}": v for k, v in blob["metadata"].items()}}
        if blob.get("rehydrating"):
            headers["x-ms-archive-status"] = f"rehydrate-pending-to-{blob['rehydrating'].lower()}"
        if method == "HEAD":
            return self._raw(request, 200, b"", {**headers, "Content-Length": str(len(blob["data"]))})
        data = blob["data"]
        return self._raw(request, 206, data, {**headers, "Content-Range": f"bytes 0-{len(data) - 1}/{len(data)}"})
