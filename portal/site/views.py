"""Customer pages: thin views over forms, services and selectors."""
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.db.models import Prefetch
from django.http import JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET

from cells.choices import OperationKind
from cells.models import Instance, Operation
from cells.placement import NoCapacity
from cells.services import SignupRefused, instance_signup
from portal.site.forms import InstanceForm, SignupForm
from provisioning.operations import operation_progress

CAPACITY_MESSAGE = "We are adding capacity in {region}; please try again in a few minutes."


def signup(request):
    """New customers get an account and an instance; signed-in customers add an instance."""
    form_class = InstanceForm if request.user.is_authenticated else SignupForm
    form = form_class(request.POST or None)
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
        except SignupRefused as refusal:
            form.add_error(refusal.field, str(refusal))
        except NoCapacity:
            form.add_error(None, CAPACITY_MESSAGE.format(region=data["region"].name))
        else:
            instance = operation.instance
            if not signed_in:
                login(request, instance.owner, backend="django.contrib.auth.backends.ModelBackend")
            messages.success(request, f"{instance.name} is on its way.")
            return redirect("site:instance-detail", name=instance.name)
    return render(request, "site/signup.html", {"form": form}, status=400 if form.errors else 200)


def _with_provision(queryset):
    provisions = Operation.objects.filter(kind=OperationKind.PROVISION).order_by("-created_at", "-id")
    return queryset.select_related("region").prefetch_related(Prefetch("operations", provisions, to_attr="provisions"))


def _status(instance) -> dict:
    operation = instance.provisions[0] if instance.provisions else None
    progress = operation_progress(operation)
    progress.pop("error")  # internal detail is for staff; the customer sees the state
    return {
        "name": instance.name,
        "state": instance.state,
        "state_label": instance.get_state_display(),
        "hostname": instance.hostname,
        "version": instance.server_version,
        "progress": progress,
    }


@login_required
def instance_list(request):
    """The signed-in customer's own instances with live provisioning progress (two queries)."""
    instances = list(_with_provision(Instance.objects.filter(owner=request.user)))
    rows = [(instance, _status(instance)) for instance in instances]
    return render(request, "site/instance_list.html", {"rows": rows})


def _own_instance(request, name):
    """The customer's own instance, or 404 — never a hint that someone else's exists."""
    return get_object_or_404(_with_provision(Instance.objects.filter(owner=request.user)), name=name)


@login_required
def instance_detail(request, name):
    instance = _own_instance(request, name)
    return render(request, "site/instance_detail.html", {"instance": instance, "status": _status(instance)})


@login_required
@require_GET
def instance_status(request, name):
    """State and progress as JSON, polled by the pages while work is under way."""
    return JsonResponse(_status(_own_instance(request, name)))
