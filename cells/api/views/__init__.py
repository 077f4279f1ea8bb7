"""API views: thin — they check roles, call selectors for reads and services for work.

Actions that start work answer 202 with the Operation and its URL in ``Location``. Every write through the API
(POST, PUT, PATCH, DELETE by a signed-in caller) is audited once, in ``AuditedWrites.finalize_response``, with its
outcome: succeeded (2xx), refused (4xx, with the error's message) or failed (5xx).
"""
from cells.api.views.instances import InstanceViewSet
from cells.api.views.operations import BackupViewSet, OperationViewSet
from cells.api.views.releases import ReleaseViewSet, RolloutViewSet
from cells.api.views.tokens import ApiTokenViewSet
from cells.api.views.topology import PoolViewSet, ReefViewSet, RegionViewSet, ShareViewSet

__all__ = [
    "ApiTokenViewSet", "BackupViewSet", "InstanceViewSet", "OperationViewSet", "PoolViewSet", "ReefViewSet",
    "RegionViewSet", "ReleaseViewSet", "RolloutViewSet", "ShareViewSet",
]
