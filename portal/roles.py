"""Who may do what: customers, read-only staff and staff.

- staff: active ``is_staff`` users not in the read-only group — read and act on everything;
- read-only staff: active ``is_staff`` users in the ``READ_ONLY_STAFF_GROUP`` — read everything, act on nothing;
- customers: everyone else signed in — their own instances only.
"""
READ_ONLY_STAFF_GROUP = "read-only staff"


def is_staff_reader(user) -> bool:
    return bool(user and user.is_authenticated and user.is_active and user.is_staff)


def is_read_only_staff(user) -> bool:
    if not is_staff_reader(user):
        return False
    cached = getattr(user, "_cellhub_read_only", None)
    if cached is None:
        cached = user.groups.filter(name=READ_ONLY_STAFF_GROUP).exists()
        user._cellhub_read_only = cached
    return cached


def is_staff_operator(user) -> bool:
    return is_staff_reader(user) and not is_read_only_staff(user)
