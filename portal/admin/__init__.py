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

for _model, _model_admin in list(admin.site._registry.items()):
    if not isinstance(_model_admin, AuditedModelAdmin):
        _class = type(_model_admin)
        admin.site.unregister(_model)
        admin.site.register(_model, type(f"Audited{_class.__name__}", (AuditedModelAdmin, _class), {}))
