"""django-q2's task pages, with its resubmit action limited to staff who may act.

django-q2 declares ``resubmit_task`` without ``permissions=``, so anyone who may view the task lists (read-only
staff too) could queue tasks again — and, on the failures page, delete them. Here it asks for the change
permission, which read-only staff never hold.
"""
from django.contrib import admin
from django_q.admin import FailAdmin, TaskAdmin, resubmit_task
from django_q.models import Failure, Success


@admin.action(description="Resubmit selected tasks to queue", permissions=["change"])
def resubmit(modeladmin, request, queryset):
    resubmit_task(modeladmin, request, queryset)


class GuardedTaskAdmin(TaskAdmin):
    actions = [resubmit]


class GuardedFailAdmin(FailAdmin):
    actions = [resubmit]


for _model, _admin in ((Success, GuardedTaskAdmin), (Failure, GuardedFailAdmin)):
    if admin.site.is_registered(_model):
        admin.site.unregister(_model)
    admin.site.register(_model, _admin)
