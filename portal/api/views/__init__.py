"""API views: thin — they check roles, call selectors for reads and services for work.

Actions that start work answer 202 with the Operation and its URL in ``Location``. Every write through the API
(POST, PUT, PATCH, DELETE by a signed-in caller) is audited once, in ``AuditedWrites.finalize_response``, with its
outcome: succeeded (2xx), refused (4xx, with the error's message) or failed (5xx).
"""
from portal.api.views.instances import InstanceViewSet
from portal.api.views.operations import BackupViewSet, OperationViewSet
from portal.api.views.releases import ReleaseViewSet, RolloutViewSet
from portal.api.views.tokens import ApiTokenViewSet
from portal.api.views.topology import PoolViewSet, ReefViewSet, RegionViewSet, ShareViewSet

__all__ = [
    "ApiTokenViewSet", "BackupViewSet", "InstanceViewSet", "OperationViewSet", "PoolViewSet", "ReefViewSet",
    "RegionViewSet", "ReleaseViewSet", "RolloutViewSet", "ShareViewSet",
]
