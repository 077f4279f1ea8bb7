"""Routes of /api/v1/: kebab-case plural resources."""
from rest_framework.routers import DefaultRouter

from cells.api.views import RegionViewSet

router = DefaultRouter()
router.register("regions", RegionViewSet, basename="region")
urlpatterns = router.urls
