"""The customer site."""
from django.contrib.auth import views as auth_views
from django.urls import path
from django.views.generic import RedirectView

from portal.site import views

app_name = "site"
urlpatterns = [
    path("", RedirectView.as_view(pattern_name="site:instance-list", permanent=False), name="home"),
    path("signup/", views.signup, name="signup"),
    path("login/", auth_views.LoginView.as_view(template_name="site/login.html"), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("instances/", views.instance_list, name="instance-list"),
    path("instances/<slug:name>/", views.instance_detail, name="instance-detail"),
    path("instances/<slug:name>/status.json", views.instance_status, name="instance-status"),
]
