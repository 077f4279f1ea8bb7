"""Routes of /api/v1/: kebab-case plural resources."""
from rest_framework.routers import DefaultRouter

from portal.api import views

app_name = "api"
router = DefaultRouter()
router.register("regions", views.RegionViewSet, basename="region")
router.register("reefs", views.ReefViewSet, basename="reef")
router.register("pools", views.PoolViewSet, basename="pool")
router.register("shares", views.ShareViewSet, basename="share")
router.register("instances", views.InstanceViewSet, basename="instance")
router.register("operations", views.OperationViewSet, basename="operation")
router.register("backups", views.BackupViewSet, basename="backup")
router.register("releases", views.ReleaseViewSet, basename="release")
router.register("rollouts", views.RolloutViewSet, basename="rollout")
router.register("tokens", views.ApiTokenViewSet, basename="token")
urlpatterns = router.urls
