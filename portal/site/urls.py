"""The customer site."""
from django.contrib.auth import views as auth_views
from django.urls import path
from django.views.generic import RedirectView

from portal.site import accounts, maintenance, views

app_name = "site"
urlpatterns = [
    path("", RedirectView.as_view(pattern_name="site:instance-list", permanent=False), name="home"),
    path("signup/", views.signup, name="signup"),
    path("login/", accounts.login_view, name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("account/", accounts.account, name="account"),
    path("account/tokens/<int:token_id>/revoke/", accounts.token_revoke, name="token-revoke"),
    path("account/password/", accounts.password_change, name="password-change"),
    path("account/password/done/", accounts.password_change_done, name="password-change-done"),
    path("password-reset/", accounts.password_reset, name="password-reset"),
    path("password-reset/sent/", accounts.password_reset_done, name="password-reset-done"),
    path("password-reset/<uidb64>/<token>/", accounts.password_reset_confirm, name="password-reset-confirm"),
    path("password-reset/done/", accounts.password_reset_complete, name="password-reset-complete"),
    path("instances/", views.instance_list, name="instance-list"),
    path("instances/<slug:name>/", views.instance_detail, name="instance-detail"),
    path("instances/<slug:name>/status.json", views.instance_status, name="instance-status"),
    path("instances/<slug:name>/backups/", views.instance_backup_now, name="instance-backup"),
    path("instances/<slug:name>/stop/", views.instance_stop_view, name="instance-stop"),
    path("instances/<slug:name>/start/", views.instance_start_view, name="instance-start"),
    path("instances/<slug:name>/restore/", views.instance_restore_view, name="instance-restore"),
    path("instances/<slug:name>/restore/files/", views.instance_restore_files_view, name="instance-restore-files"),
    path(
        "instances/<slug:name>/restore/confirm/", views.instance_restore_confirm_view, name="instance-restore-confirm"
    ),
    path("instances/<slug:name>/decommission/", views.instance_decommission_view, name="instance-decommission"),
    path("instances/<slug:name>/window/", maintenance.instance_window, name="instance-window"),
]
