"""API filters: ``?state=``, ``?region=`` (slug), ``?reef=`` (id) wherever they make sense.

Models whose lifecycle field is called ``status`` accept ``?state=`` too, so clients filter alike everywhere.
"""
import django_filters

from cells.choices import InstanceState, OperationKind, OperationState, PoolKind, PoolStatus, ReefStatus, ShareStatus
from cells.models import Instance, Operation, Pool, Reef, Region, Share


class RegionFilterSet(django_filters.FilterSet):
    state = django_filters.CharFilter(field_name="status")

    class Meta:
        model = Region
        fields = ["status", "cloud"]


class ReefFilterSet(django_filters.FilterSet):
    state = django_filters.ChoiceFilter(field_name="status", choices=ReefStatus.choices)
    region = django_filters.CharFilter(field_name="region__slug")

    class Meta:
        model = Reef
        fields = ["status", "rollout_ring"]


class PoolFilterSet(django_filters.FilterSet):
    state = django_filters.ChoiceFilter(field_name="status", choices=PoolStatus.choices)
    kind = django_filters.ChoiceFilter(choices=PoolKind.choices)
    region = django_filters.CharFilter(field_name="reef__region__slug")

    class Meta:
        model = Pool
        fields = ["status", "reef", "provider", "dedicated"]


class ShareFilterSet(django_filters.FilterSet):
    state = django_filters.ChoiceFilter(field_name="status", choices=ShareStatus.choices)
    reef = django_filters.NumberFilter(field_name="pool__reef")
    region = django_filters.CharFilter(field_name="pool__reef__region__slug")

    class Meta:
        model = Share
        fields = ["status", "pool"]


class InstanceFilterSet(django_filters.FilterSet):
    state = django_filters.ChoiceFilter(choices=InstanceState.choices)
    region = django_filters.CharFilter(field_name="region__slug")
    version = django_filters.CharFilter(field_name="server_version")

    class Meta:
        model = Instance
        fields = ["state", "reef", "tier"]


class OperationFilterSet(django_filters.FilterSet):
    state = django_filters.ChoiceFilter(choices=OperationState.choices)
    kind = django_filters.ChoiceFilter(choices=OperationKind.choices)
    instance = django_filters.CharFilter(field_name="instance__name")
    region = django_filters.CharFilter(field_name="instance__region__slug")
    reef = django_filters.NumberFilter(field_name="instance__reef")

    class Meta:
        model = Operation
        fields = ["state", "kind"]
