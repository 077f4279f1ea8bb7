"""The support staff's admin, one module per area; importing the package registers every model.

Every change made through the admin is audited: the hub's own ModelAdmins derive from ``AuditedModelAdmin``, and the
admins other apps registered earlier (users and groups, django-q2's schedules, django-axes' attempts) are registered
again here as audited subclasses of themselves. ``portal`` is the last installed app, so they are all in by now.
"""
import importlib
import pkgutil

from django.contrib import admin

from portal.admin.audit import AuditedModelAdmin

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

def _guarded(action):
    """Another app's admin action without a permission of its own: it now asks for ``change`` (read-only staff lack
    it), the rule every action of the hub's own admins follows."""
    if not getattr(action, "allowed_permissions", None):
        action.allowed_permissions = ("change",)
    return action


for _model, _model_admin in list(admin.site._registry.items()):
    if not isinstance(_model_admin, AuditedModelAdmin):
        _class = type(_model_admin)
        _actions = [_guarded(getattr(_class, name)) if isinstance(name, str) else _guarded(name)
                    for name in (_class.actions or [])]
        admin.site.unregister(_model)
        admin.site.register(
            _model, type(f"Audited{_class.__name__}", (AuditedModelAdmin, _class), {"actions": _actions})
        )
