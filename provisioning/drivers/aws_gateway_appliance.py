"""The EC2 side of a Storage Gateway the hub starts itself: the appliance, its security group, its activation key
and its DNS record — so a top-up on AWS makes a whole gateway with no human in the loop.

Used by ``aws_storage_gateway.StorageGatewayDriver`` when its pool's config has ``subnet_id``:

- the image: the SSM public parameter ``gateway_ami_parameter`` (default
  ``/aws/service/storagegateway/ami/FILE_S3/latest``, AWS's current S3 File Gateway AMI);
- the security group ``<prefix>-p<pool id>`` in the subnet's VPC: HTTP (80) from ``activation_cidr`` only (the
  hub fetches the activation key there), and NFS (TCP 2049, TCP/UDP 111 and 20048) from each share's own
  instance address (``sync_nfs_clients``; nothing else);
- the instance: ``gateway_instance_type`` (default ``m5.xlarge``), an encrypted 80 GiB root and an encrypted
  ``cache_disk_gib`` (default 150) cache disk, IMDSv2 only, tagged with the pool, started once (``ClientToken``);
- the activation key: ``GET http://<appliance>/?activationRegion=<region>&no_redirect`` answered by the appliance
  itself (``activation_port``, default 80; the private address, or the public one with
  ``activation_address: public``);
- a DNS record ``<prefix>-p<pool id>.<hub domain>`` → the gateway's address, through the region's DNS driver.

Every piece is found by its name or tags before it is made, so a repeated call (a retried step) makes nothing
twice; ``delete`` removes them all (absent is fine).
"""
from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request

from botocore.exceptions import WaiterError

from provisioning import drivers
from provisioning.drivers.base import PermanentDriverError, TransientDriverError
from provisioning.drivers.cloud_retry import CloudConflictError, CloudNotFoundError, cloud_call

AMI_PARAMETER = "/aws/service/storagegateway/ami/FILE_S3/latest"
NFS_PORTS = (("tcp", 2049), ("tcp", 111), ("udp", 111), ("tcp", 20048), ("udp", 20048))
LIVE_STATES = ["pending", "running", "stopping", "stopped"]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # the appliance's redirect carries the key in its Location: read it, don't follow it


class GatewayAppliance:
    """The EC2 appliance of one Storage Gateway pool; every AWS call through ``cloud_call``."""

    def __init__(self, driver):
        self.driver = driver
        self.pool = driver.pool
        self.config = driver.config
        self.name = driver._gateway_name()

    def _client(self, service: str):
        return self.driver._client(service)

    def _tags(self) -> list[dict]:
        return [{"Key": "Name", "Value": self.name}, {"Key": "cellhub-pool", "Value": str(self.pool.pk)}]

    def _wait(self, waiter_name: str, **params) -> None:
        """An EC2 waiter; running out of attempts is transient (the step is retried), a failure state permanent."""
        waiter = self._client("ec2").get_waiter(waiter_name)
        config = {"Delay": int(self.config.get("waiter_delay_seconds", 15)),
                  "MaxAttempts": int(self.config.get("waiter_max_attempts", 40))}
        try:
            cloud_call(f"wait for {waiter_name} ({self.name})", lambda: waiter.wait(WaiterConfig=config, **params))
        except WaiterError as error:
            if "Max attempts exceeded" in str(error):
                raise TransientDriverError(f"appliance {self.name}: still waiting ({waiter_name})") from error
            raise PermanentDriverError(f"appliance {self.name}: {waiter_name} failed: {error}") from error

    # -- image and network ------------------------------------------------------------------------
    def image_id(self) -> str:
        """The current gateway AMI, from its SSM public parameter."""
        name = self.config.get("gateway_ami_parameter", AMI_PARAMETER)
        ssm = self._client("ssm")
        return cloud_call(f"read SSM parameter {name}", lambda: ssm.get_parameter(Name=name))["Parameter"]["Value"]

    def vpc_id(self) -> str:
        if self.config.get("vpc_id"):
            return self.config["vpc_id"]
        ec2, subnet = self._client("ec2"), self.config["subnet_id"]
        found = cloud_call(f"describe subnet {subnet}", lambda: ec2.describe_subnets(SubnetIds=[subnet]))
        return found["Subnets"][0]["VpcId"]

    def find_security_group(self) -> dict | None:
        ec2 = self._client("ec2")
        found = cloud_call(
            f"find security group {self.name}",
            lambda: ec2.describe_security_groups(Filters=[
                {"Name": "group-name", "Values": [self.name]},
                {"Name": "tag:cellhub-pool", "Values": [str(self.pool.pk)]},
            ]),
        )["SecurityGroups"]
        return found[0] if found else None

    def ensure_security_group(self) -> str:
        """The appliance's security group (made if missing): HTTP from ``activation_cidr`` only; NFS rules are
        per share (``sync_nfs_clients``). Raises ``PermanentDriverError`` without ``activation_cidr``."""
        if not self.config.get("activation_cidr"):
            raise PermanentDriverError(
                f"Storage Gateway pool {self.pool}: config is missing activation_cidr (the hub's address range, "
                "allowed to fetch the activation key on port 80)"
            )
        ec2 = self._client("ec2")
        found = self.find_security_group()
        if found is None:
            group_id = cloud_call(
                f"create security group {self.name}",
                lambda: ec2.create_security_group(
                    GroupName=self.name, VpcId=self.vpc_id(),
                    Description=f"Cell Hub storage gateway of pool {self.pool.pk}: activation and NFS clients",
                    TagSpecifications=[{"ResourceType": "security-group", "Tags": self._tags()}],
                ),
            )["GroupId"]
            permissions = []
        else:
            group_id, permissions = found["GroupId"], found.get("IpPermissions", [])
        http = (("tcp", 80, self.config["activation_cidr"]),)
        self._authorize(group_id, set(http) - self._rules(permissions))
        return group_id

    @staticmethod
    def _rules(permissions: list[dict]) -> set[tuple[str, int, str]]:
        return {
            (permission.get("IpProtocol"), permission.get("FromPort"), ip_range["CidrIp"])
            for permission in permissions for ip_range in permission.get("IpRanges", [])
        }

    @staticmethod
    def _permissions(rules) -> list[dict]:
        return [{"IpProtocol": protocol, "FromPort": port, "ToPort": port, "IpRanges": [{"CidrIp": cidr}]}
                for protocol, port, cidr in sorted(rules)]

    def _authorize(self, group_id: str, rules) -> None:
        if not rules:
            return
        ec2 = self._client("ec2")
        try:
            cloud_call(
                f"open {group_id}",
                lambda: ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=self._permissions(rules)),
                conflict=("InvalidPermission.Duplicate",),
            )
        except CloudConflictError:
            pass

    def sync_nfs_clients(self, addresses: set[str]) -> None:
        """NFS ports open to exactly ``addresses`` (one /32 each: the instances holding the pool's shares);
        rules for any other address are revoked. Nothing to do without the hub's security group."""
        found = self.find_security_group()
        if found is None:
            return
        nfs_ports = {(protocol, port) for protocol, port in NFS_PORTS}
        current = {rule for rule in self._rules(found.get("IpPermissions", [])) if rule[:2] in nfs_ports}
        wanted = {(protocol, port, f"{address}/32") for address in addresses if address
                  for protocol, port in NFS_PORTS}
        ec2, group_id = self._client("ec2"), found["GroupId"]
        stale = current - wanted
        if stale:
            try:
                cloud_call(
                    f"close {group_id} to old NFS clients",
                    lambda: ec2.revoke_security_group_ingress(GroupId=group_id, IpPermissions=self._permissions(stale)),
                    not_found=("InvalidPermission.NotFound",),
                )
            except CloudNotFoundError:
                pass
        self._authorize(group_id, wanted - current)

    # -- the instance ----------------------------------------------------------------------------
    def find_instance(self) -> dict | None:
        ec2 = self._client("ec2")
        reservations = cloud_call(
            f"find appliance {self.name}",
            lambda: ec2.describe_instances(Filters=[
                {"Name": "tag:cellhub-pool", "Values": [str(self.pool.pk)]},
                {"Name": "tag:Name", "Values": [self.name]},
                {"Name": "instance-state-name", "Values": LIVE_STATES},
            ]),
        )["Reservations"]
        instances = [instance for reservation in reservations for instance in reservation["Instances"]]
        return instances[0] if instances else None

    def ensure_instance(self, group_id: str) -> dict:
        """The appliance (started if missing), waited for until running."""
        found = self.find_instance()
        if found is None:
            cache_gib = int(self.config.get("cache_disk_gib", 150))
            params = {
                "ImageId": self.image_id(),
                "InstanceType": self.config.get("gateway_instance_type", "m5.xlarge"),
                "MinCount": 1,
                "MaxCount": 1,
                "SubnetId": self.config["subnet_id"],
                "SecurityGroupIds": [group_id],
                "ClientToken": f"{self.name}-appliance",
                "MetadataOptions": {"HttpTokens": "required"},
                "BlockDeviceMappings": [
                    {"DeviceName": "/dev/xvda",
                     "Ebs": {"VolumeSize": 80, "VolumeType": "gp3", "Encrypted": True, "DeleteOnTermination": True}},
                    {"DeviceName": "/dev/sdf",
                     "Ebs": {"VolumeSize": cache_gib, "VolumeType": "gp3", "Encrypted": True,
                             "DeleteOnTermination": True}},
                ],
                "TagSpecifications": [{"ResourceType": "instance", "Tags": self._tags()},
                                      {"ResourceType": "volume", "Tags": self._tags()}],
            }
            if self.config.get("gateway_private_ip"):
                params["PrivateIpAddress"] = self.config["gateway_private_ip"]
            ec2 = self._client("ec2")
            found = cloud_call(f"start appliance {self.name}", lambda: ec2.run_instances(**params))["Instances"][0]
        self._wait("instance_running", InstanceIds=[found["InstanceId"]])
        return self.find_instance() or found

    def address(self, instance: dict) -> str:
        if self.config.get("activation_address") == "public":
            return instance.get("PublicIpAddress") or ""
        return instance.get("PrivateIpAddress") or ""

    def activation_key(self) -> str:
        """Start (or find) the security group and the appliance, then ask the appliance for its activation key.
        ``TransientDriverError`` while it boots (no answer yet)."""
        instance = self.ensure_instance(self.ensure_security_group())
        address = self.address(instance)
        if not address:
            raise TransientDriverError(f"appliance {self.name} has no address yet")
        port = int(self.config.get("activation_port", 80))
        query = urllib.parse.urlencode({"activationRegion": self.driver.region, "no_redirect": ""})
        url = f"http://{address}:{port}/?{query}"
        opener = urllib.request.build_opener(_NoRedirect)
        try:
            with opener.open(url, timeout=10) as response:
                key = response.read().decode().strip()
        except urllib.error.HTTPError as error:
            location = error.headers.get("Location", "") if error.code in (301, 302, 303, 307) else ""
            key = urllib.parse.parse_qs(urllib.parse.urlparse(location).query).get("activationKey", [""])[0]
            if not key:
                raise TransientDriverError(f"appliance {self.name} answered {error.code} without a key") from error
        except (urllib.error.URLError, OSError) as error:
            raise TransientDriverError(f"appliance {self.name} at {address}:{port} is not answering yet: {error}") \
                from error
        if not key or len(key) > 50 or " " in key:
            raise TransientDriverError(f"appliance {self.name} gave no activation key yet")
        return key

    def found_config(self) -> dict:
        """The ids of what was made, for the pool's config (host keys: never copied into another pool)."""
        instance, group = self.find_instance(), self.find_security_group()
        return {"gateway_instance_id": instance["InstanceId"] if instance else "",
                "security_group_id": group["GroupId"] if group else ""}

    # -- DNS and deletion ------------------------------------------------------------------------
    def ensure_dns_record(self, address: str) -> str:
        """``<prefix>-p<pool id>.<hub domain>`` → ``address``; returns the name."""
        dns = drivers.for_dns(self.pool.reef.region)
        dns.upsert_record(name=self.name, address=address)
        return dns.fqdn(self.name)

    def delete(self) -> None:
        """Remove the DNS record, terminate the appliance (its disks go with it) and delete the security group;
        absent is fine. The group outlives a terminating instance for a while: that is transient."""
        drivers.for_dns(self.pool.reef.region).delete_record(name=self.name)
        ec2 = self._client("ec2")
        instance = self.find_instance()
        if instance is not None:
            cloud_call(f"terminate appliance {self.name}",
                       lambda: ec2.terminate_instances(InstanceIds=[instance["InstanceId"]]))
            self._wait("instance_terminated", InstanceIds=[instance["InstanceId"]])
        group = self.find_security_group()
        if group is not None:
            try:
                cloud_call(
                    f"delete security group {self.name}",
                    lambda: ec2.delete_security_group(GroupId=group["GroupId"]),
                    not_found=("InvalidGroup.NotFound",),
                    conflict=("DependencyViolation",),
                )
            except CloudNotFoundError:
                pass
            except CloudConflictError as error:
                raise TransientDriverError(f"security group {self.name} is still in use: {error}") from error
