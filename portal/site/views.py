"""Customer pages: thin views over forms, services and selectors. Every action a customer takes here is audited
(``_audit``), refusals included."""
import re

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.db.models import Prefetch
from django.http import JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from cells.audit import REFUSED, SUCCEEDED, audit_record, request_fields
from cells.choices import OPERATION_ACTIVE_STATES, ActorKind, InstanceState, OperationState
from cells.errors import NoCapacity, Refused
from cells.models import Instance, Operation
from cells.states import INSTANCE
from portal.site.accounts import signup_allowed
from portal.site.forms import DecommissionForm, InstanceForm, RestoreFilesForm, RestoreForm, SignupForm
from provisioning.backups import (
    instance_backup,
    instance_decommission,
    instance_restore,
    instance_restore_confirm,
    instance_restore_files,
)
from provisioning.backups.restore import when
from provisioning.backups.selectors import BACKUP_STATES, RESTORE_STATES, instance_backup_overview
from provisioning.drivers.base import DriverError
from provisioning.health import instance_health_overview
from provisioning.lifecycle import instance_signup, instance_start, instance_stop
from provisioning.models import BackupKind
from provisioning.operations import operation_progress, plan_for
from provisioning.ports import instance_address

CAPACITY_MESSAGE = "We are adding capacity in {region}; please try again in a few minutes."
THROTTLED_MESSAGE = "Too many signups from here just now; please try again later."


def _audit(request, action, target=None, outcome=SUCCEEDED, reason="", **details):
    """Record a customer's action on the site (an anonymous signup counts as the customer's)."""
    audit_record(
        action=action, outcome=outcome, target=target, reason=reason, request=request,
        actor_kind=None if request.user.is_authenticated else ActorKind.CUSTOMER,
        details={"via": "site", **request_fields(request.POST), **details},
        **({} if target is not None else {"target_type": "instance", "target_label": request.POST.get("name", "")}),
    )


def _errors(form) -> str:
    return " ".join(str(message) for messages_ in form.errors.values() for message in messages_)


def signup(request):
    """New customers get an account and an instance; signed-in customers add an instance."""
    form_class = InstanceForm if request.user.is_authenticated else SignupForm
    form = form_class(request.POST or None)
    if request.method == "POST" and not signup_allowed(request):
        form.add_error(None, THROTTLED_MESSAGE)
        _audit(request, "instance.signup", None, REFUSED, reason="throttled")
        return render(request, "site/signup.html", {"form": form}, status=429)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        signed_in = request.user.is_authenticated
        try:
            operation = instance_signup(
                name=data["name"],
                region=data["region"],
                owner=request.user if signed_in else None,
                new_owner=None if signed_in else {"email": data["email"], "password": data["password"]},
            )
        except NoCapacity:
            form.add_error(None, CAPACITY_MESSAGE.format(region=data["region"].name))
        except Refused as refusal:
            form.add_error(refusal.field, str(refusal))
        else:
            instance = operation.instance
            if not signed_in:
                login(request, instance.owner, backend="portal.accounts.EmailOrUsernameBackend")
            _audit(request, "instance.signup", instance, operation=operation.pk)
            messages.success(request, f"{instance.name} is on its way.")
            return redirect("site:instance-detail", name=instance.name)
    if request.method == "POST":
        _audit(request, "instance.signup", None, REFUSED, reason=_errors(form))
    return render(request, "site/signup.html", {"form": form}, status=400 if form.errors else 200)


def _with_operations(queryset):
    operations = Operation.objects.order_by("-created_at", "-id")
    return queryset.select_related("region", "host_port").prefetch_related(
        Prefetch("operations", operations, to_attr="recent_operations")
    )


def _current_operation(instance):
    """The operation the customer should see: one under way, else the latest."""
    operations = instance.recent_operations
    return next((op for op in operations if op.state in OPERATION_ACTIVE_STATES), operations[0] if operations else None)


def _failure_text(operation, progress) -> str:
    """A failed operation in plain words: what, where it stopped, why (its first line, without the class names,
    retry counts and internal addresses staff read in the admin), whether it was undone, and that staff know."""
    lines = (operation.error or "").strip().splitlines()
    reason = lines[0] if lines else ""
    reason = reason.split(": ", 1)[1] if reason.startswith(tuple(f"{n}: " for n in _ERROR_CLASSES)) else reason
    reason = re.sub(r"^[\w ]+: gave up after \d+ attempts: ", "", reason)
    reason = re.sub(r"^not healthy yet: ", "", reason)
    reason = re.sub(r"https?://\S+ answered (\d+)", r"it answered \1", reason)
    stopped = f" at the step “{progress['failed_at']}”" if progress.get("failed_at") else ""
    undone = " It was rolled back to where it was." if any(line.startswith("rolled back:") for line in lines) else ""
    return (f"The {operation.get_kind_display().lower()} did not finish{stopped}" + (f": {reason[:300]}" if reason
            else "") + f".{undone} Our support staff have been told and will look into it.")


_ERROR_CLASSES = ("PermanentDriverError", "TransientDriverError", "BackupKeyError", "BackupCorrupt", "CallTimedOut",
                  "Refused", "IllegalTransition", "OperationInProgress", "NotSupported")


def _progress(operation) -> dict:
    """The operation's progress for the customer: no internal error text, a failure in plain words instead."""
    progress = operation_progress(operation)
    progress.pop("error")
    if operation is not None and operation.state == OperationState.FAILED:
        names = plan_for(operation.kind).step_names
        progress["failed_at"] = next((n for n in names if n not in operation.done_step_names), "")
        progress["failure"] = _failure_text(operation, progress)
    return progress


def _status(instance) -> dict:
    operation = _current_operation(instance)
    progress = _progress(operation)
    host_port = getattr(instance, "host_port", None)  # select_related; None when it has no port (not local)
    return {
        "name": instance.name,
        "state": instance.state,
        "state_label": instance.get_state_display(),
        "hostname": instance.hostname,
        "address": instance_address(instance, port=host_port.port if host_port else 0),
        "version": instance.server_version,
        "operation": operation.get_kind_display() if operation else "",
        "operation_id": operation.pk if operation else None,
        "progress": progress,
    }


@login_required
def instance_list(request):
    """The signed-in customer's own instances with live progress of their latest operation (two queries)."""
    instances = list(_with_operations(Instance.objects.filter(owner=request.user)))
    rows = [(instance, _status(instance)) for instance in instances]
    return render(request, "site/instance_list.html", {"rows": rows})


def _own_instance(request, name):
    """The customer's own instance, or 404 — never a hint that someone else's exists."""
    return get_object_or_404(_with_operations(Instance.objects.filter(owner=request.user)), name=name)


def _detail(request, instance, *, status=200, **forms):
    """The instance page with its backups, restores and lifecycle actions; ``forms`` carry refused input back."""
    overview = instance_backup_overview(instance)
    overview["operations"] = [(operation, _progress(operation)) for operation in instance.recent_operations[:10]]
    context = {
        "instance": instance,
        "status": _status(instance),
        "can_stop": INSTANCE.can(instance.state, InstanceState.STOPPED),
        "can_start": INSTANCE.can(instance.state, InstanceState.RUNNING) and instance.state == InstanceState.STOPPED,
        **overview,
        "can_back_up": instance.state in BACKUP_STATES,
        "can_restore": instance.state in RESTORE_STATES,
        "can_decommission": INSTANCE.can(instance.state, InstanceState.DECOMMISSIONING),
        "restore_form": forms.get("restore_form") or RestoreForm(window=overview["window"]),
        "decommission_form": forms.get("decommission_form") or DecommissionForm(),
        "files_error": forms.get("files_error", ""),
        "keep_days": settings.CELLHUB["RESTORE_KEEP_OLD_DAYS"],
        "archive_days": settings.CELLHUB["ARCHIVE_RETENTION_DAYS"],
        **instance_health_overview(instance),
    }
    return render(request, "site/instance_detail.html", context, status=status)


@login_required
def instance_detail(request, name):
    return _detail(request, _own_instance(request, name))


@login_required
@require_POST
def instance_backup_now(request, name):
    """Back the database and the files up now."""
    instance = _own_instance(request, name)
    try:
        operation = instance_backup(
            instance=instance, kinds=[BackupKind.DATABASE, BackupKind.FILES], requested_by=request.user
        )
    except Refused as refusal:
        return _refused(request, instance, "instance.backup", refusal)
    _audit(request, "instance.backup", instance, operation=operation.pk)
    messages.success(request, f"A backup of {instance.name} is on its way.")
    return redirect("site:instance-detail", name=instance.name)


@login_required
@require_POST
def instance_restore_view(request, name):
    """Restore the database to a point in time inside the restorable window."""
    instance = _own_instance(request, name)
    form = RestoreForm(request.POST, window=instance_backup_overview(instance)["window"])
    if form.is_valid():
        try:
            instance_restore(
                instance=instance, point_in_time=form.cleaned_data["point_in_time"], requested_by=request.user
            )
        except Refused as refusal:
            if not getattr(refusal, "field", None):
                return _refused(request, instance, "instance.restore", refusal)
            form.add_error("point_in_time", str(refusal))
        else:
            _audit(request, "instance.restore", instance)
            messages.success(
                request, f"{instance.name} is being restored to {when(form.cleaned_data['point_in_time'])}."
            )
            return redirect("site:instance-detail", name=instance.name)
    _audit(request, "instance.restore", instance, REFUSED, reason=_errors(form))
    return _detail(request, instance, status=400, restore_form=form)


@login_required
@require_POST
def instance_restore_files_view(request, name):
    """Bring the share's files back from one of the instance's files backups."""
    instance = _own_instance(request, name)
    form = RestoreFilesForm(request.POST, instance=instance)
    if form.is_valid():
        try:
            instance_restore_files(instance=instance, backup=form.cleaned_data["backup"], requested_by=request.user)
        except Refused as refusal:
            return _refused(request, instance, "instance.restore_files", refusal)
        else:
            _audit(request, "instance.restore_files", instance)
            messages.success(request, f"The files of {instance.name} are being restored.")
            return redirect("site:instance-detail", name=instance.name)
    errors = " ".join(message for messages_ in form.errors.values() for message in messages_)
    _audit(request, "instance.restore_files", instance, REFUSED, reason=errors)
    return _detail(request, instance, status=400, files_error=errors)


@login_required
def instance_restore_confirm_view(request, name):
    """Accept the restore: the replaced database is deleted now instead of at the end of its keep period. GET asks
    first, on a page of its own that says what is deleted; only the POST from it deletes."""
    instance = _own_instance(request, name)
    if request.method != "POST":
        kept = instance_backup_overview(instance)["kept"]
        return render(request, "site/restore_confirm.html", {"instance": instance, "kept": kept})
    try:
        instance_restore_confirm(instance=instance, requested_by=request.user)
    except Refused as refusal:
        return _refused(request, instance, "instance.restore_confirm", refusal)
    except DriverError as error:
        _audit(request, "instance.restore_confirm", instance, "failed", reason=str(error))
        messages.error(request, "The previous database could not be deleted right now; please try again later.")
        return redirect("site:instance-detail", name=instance.name)
    _audit(request, "instance.restore_confirm", instance)
    messages.success(request, "Restore confirmed: the previous database was deleted.")
    return redirect("site:instance-detail", name=instance.name)


@login_required
@require_POST
def instance_decommission_view(request, name):
    """Decommission the instance once its name is typed out."""
    instance = _own_instance(request, name)
    form = DecommissionForm(request.POST)
    if form.is_valid():
        try:
            instance_decommission(
                instance=instance, confirm_name=form.cleaned_data["confirm_name"], requested_by=request.user
            )
        except Refused as refusal:
            if not getattr(refusal, "field", None):
                return _refused(request, instance, "instance.decommission", refusal)
            form.add_error("confirm_name", str(refusal))
        else:
            _audit(request, "instance.decommission", instance)
            messages.success(request, f"{instance.name} is being decommissioned.")
            return redirect("site:instance-detail", name=instance.name)
    _audit(request, "instance.decommission", instance, REFUSED, reason=_errors(form))
    return _detail(request, instance, status=400, decommission_form=form)


def _refused(request, instance, action, refusal):
    """A service refused: audit it, say why, and go back to the instance's page (POST/redirect/GET, so a reload
    never repeats the action)."""
    _audit(request, action, instance, REFUSED, reason=str(refusal))
    messages.error(request, str(refusal))
    return redirect("site:instance-detail", name=instance.name)


def _power(request, name, service, action, done):
    instance = _own_instance(request, name)
    try:
        operation = service(instance=instance, requested_by=request.user)
    except Refused as refusal:
        return _refused(request, instance, action, refusal)
    _audit(request, action, instance, operation=operation.pk)
    messages.success(request, done.format(name=instance.name))
    return redirect("site:instance-detail", name=instance.name)


@login_required
@require_POST
def instance_stop_view(request, name):
    """Stop the instance: its process stops, its database, files and address stay."""
    return _power(request, name, instance_stop, "instance.stop", "{name} is stopping.")


@login_required
@require_POST
def instance_start_view(request, name):
    """Start a stopped instance again."""
    return _power(request, name, instance_start, "instance.start", "{name} is starting.")


@login_required
@require_GET
def instance_status(request, name):
    """State and progress as JSON, polled by the pages while work is under way."""
    return JsonResponse(_status(_own_instance(request, name)))
