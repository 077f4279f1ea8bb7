"""One DNS provider per hub domain: the system check and the refusal at region creation (the admin's form)."""
from __future__ import annotations

import pytest
from django.core import checks
from django.urls import reverse

from cells.errors import Refused
from cells.models import Region
from provisioning.dns_policy import check_one_dns_provider, region_refuse_split_dns
from tests.factories import make_region

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def no_dns_provider_set(settings):
    settings.CELLHUB = {**settings.CELLHUB, "DNS_PROVIDER": ""}


def test_regions_in_two_clouds_without_one_dns_provider_fail_the_system_check(settings):
    make_region(cloud="aws", slug="us-east")
    assert check_one_dns_provider() == []
    make_region(cloud="azure", slug="west-europe")

    (error,) = check_one_dns_provider()

    assert error.id == "cellhub.E020" and error.level == checks.ERROR
    assert "route53: us-east" in error.msg and "azure_dns: west-europe" in error.msg
    assert error in checks.run_checks()  # registered with Django's checks
    settings.CELLHUB = {**settings.CELLHUB, "DNS_PROVIDER": "route53"}
    assert check_one_dns_provider() == []


def test_creating_a_region_that_would_split_the_domain_is_refused_naming_the_field():
    make_region(cloud="aws", slug="us-east")
    with pytest.raises(Refused, match="set CELLHUB_DNS_PROVIDER") as refusal:
        region_refuse_split_dns(cloud="azure")
    assert (refusal.value.code, refusal.value.field) == ("dns_split", "cloud")
    region_refuse_split_dns(cloud="aws")  # the same provider: fine


def test_the_admin_refuses_the_region_and_creates_nothing(staff_client):
    make_region(cloud="aws", slug="us-east")
    response = staff_client.post(reverse("admin:cells_region_add"), {
        "slug": "west-europe", "name": "West Europe", "cloud": "azure", "location": "westeurope",
        "status": "active",
    })
    assert response.status_code == 200
    assert "would split it" in response.content.decode()
    assert not Region.objects.filter(slug="west-europe").exists()
