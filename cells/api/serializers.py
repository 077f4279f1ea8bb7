"""API representations of the cell model."""
from rest_framework import serializers

from cells.models import Region


class RegionSerializer(serializers.ModelSerializer):
    reef_count = serializers.IntegerField(read_only=True)
    instance_count = serializers.IntegerField(read_only=True)
    free_instance_slots = serializers.IntegerField(read_only=True)

    class Meta:
        model = Region
        fields = ["slug", "name", "cloud", "location", "status", "reef_count", "instance_count", "free_instance_slots"]
