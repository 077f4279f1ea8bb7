"""Customer pages: thin views over selectors and services."""
from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from cells.models import Instance


@login_required
def instance_list(request):
    """The signed-in customer's own instances, newest first."""
    instances = Instance.objects.filter(owner=request.user).select_related("region")
    return render(request, "site/instance_list.html", {"instances": instances})
