"""The customer's maintenance window: when upgrades may happen, and which upgrade is waiting for it."""
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, redirect
from django.views.decorators.http import require_POST

from cells.choices import RolloutState, TargetState
from cells.models import Instance, RolloutTarget
from portal.site.forms import MaintenanceWindowForm
from provisioning.rollouts import next_window


def maintenance_overview(instance: Instance) -> dict:
    """The next (or open) window and the rollout upgrade waiting for it, if any (two queries)."""
    start, end = next_window(instance)
    pending = (
        RolloutTarget.objects.filter(
            instance=instance,
            state__in=[TargetState.PENDING, TargetState.UPGRADING],
            rollout__state__in=[RolloutState.RUNNING, RolloutState.PAUSED, RolloutState.PLANNED],
        )
        .select_related("rollout__release")
        .first()
    )
    weekday, hour = instance.window()
    return {
        "window_start": start,
        "window_end": end,
        "own_window": instance.maintenance_weekday is not None,
        "pending_version": pending.rollout.release.version if pending else None,
        "form": MaintenanceWindowForm(
            initial={"use_region_default": instance.maintenance_weekday is None, "weekday": weekday, "hour": hour}
        ),
    }


@login_required
@require_POST
def instance_window(request, name):
    """Change the instance's maintenance window (owner only; others get 404)."""
    instance = get_object_or_404(Instance.objects.select_related("region"), owner=request.user, name=name)
    form = MaintenanceWindowForm(request.POST)
    if not form.is_valid():
        for error in form.non_field_errors() or [str(e) for errors in form.errors.values() for e in errors]:
            messages.error(request, error)
        return redirect("site:instance-detail", name=name)
    if form.cleaned_data["use_region_default"]:
        weekday = hour = None
    else:
        weekday, hour = form.cleaned_data["weekday"], form.cleaned_data["hour"]
    Instance.objects.filter(pk=instance.pk).update(maintenance_weekday=weekday, maintenance_hour=hour)
    messages.success(request, "Maintenance window saved.")
    return redirect("site:instance-detail", name=name)
