"""The customer site."""
from django.contrib.auth import views as auth_views
from django.urls import path
from django.views.generic import RedirectView

from portal.site import maintenance, views

app_name = "site"
urlpatterns = [
    path("", RedirectView.as_view(pattern_name="site:instance-list", permanent=False), name="home"),
    path("signup/", views.signup, name="signup"),
    path("login/", auth_views.LoginView.as_view(template_name="site/login.html"), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("instances/", views.instance_list, name="instance-list"),
    path("instances/<slug:name>/", views.instance_detail, name="instance-detail"),
    path("instances/<slug:name>/status.json", views.instance_status, name="instance-status"),
    path("instances/<slug:name>/backups/", views.instance_backup_now, name="instance-backup"),
    path("instances/<slug:name>/restore/", views.instance_restore_view, name="instance-restore"),
    path("instances/<slug:name>/restore/files/", views.instance_restore_files_view, name="instance-restore-files"),
    path(
        "instances/<slug:name>/restore/confirm/", views.instance_restore_confirm_view, name="instance-restore-confirm"
    ),
    path("instances/<slug:name>/decommission/", views.instance_decommission_view, name="instance-decommission"),
    path("instances/<slug:name>/window/", maintenance.instance_window, name="instance-window"),
]
