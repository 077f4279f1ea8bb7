"""API permissions by role (see portal.roles): customers act on their own instances, read-only staff read
everything and act on nothing, staff do everything. Objects a customer may not see are filtered out of
the queryset, so they answer 404, never 403."""
from rest_framework import permissions

from portal.roles import is_read_only_staff, is_staff_operator, is_staff_reader


class SignedIn(permissions.BasePermission):
    """Any signed-in user; read-only staff may only read."""

    message = "Read-only staff can look but not act."

    def has_permission(self, request, view):
        if not (request.user and request.user.is_authenticated):
            return False
        return request.method in permissions.SAFE_METHODS or not is_read_only_staff(request.user)


class StaffOnly(permissions.BasePermission):
    """Staff read; only staff who are not read-only act."""

    message = "Only support staff may use this."

    def has_permission(self, request, view):
        if request.method in permissions.SAFE_METHODS:
            return is_staff_reader(request.user)
        return is_staff_operator(request.user)


class ReadAnyWriteStaff(permissions.BasePermission):
    """Signed-in users read (customers need the regions to sign up); staff change."""

    message = "Only support staff may change this."

    def has_permission(self, request, view):
        if request.method in permissions.SAFE_METHODS:
            return bool(request.user and request.user.is_authenticated)
        return is_staff_operator(request.user)
