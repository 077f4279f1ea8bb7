"""API views: thin, they call selectors and services."""
from rest_framework import permissions, viewsets

from cells import selectors
from cells.api.serializers import RegionSerializer


class RegionViewSet(viewsets.ReadOnlyModelViewSet):
    """Regions with their free capacity; any signed-in user may read them (signup needs the list)."""

    serializer_class = RegionSerializer
    permission_classes = [permissions.IsAuthenticated]
    lookup_field = "slug"

    def get_queryset(self):
        return selectors.regions_with_capacity().order_by("slug")
