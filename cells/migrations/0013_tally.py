"""Fleet tallies kept by the database (see cells.tally): triggers on cells_instance and cells_operation append signed
deltas to cells_tally in the transaction that changes a row; the data migration fills it from the rows. SQLite gets
the same triggers from cells.sqlite_triggers after every migrate. The buckets and final states are frozen here as
they were when the tallies came in (cells.tally.DURATION_BUCKETS; a test compares them)."""

from django.db import migrations, models

BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 3 * 3600, 6 * 3600)
FINAL = "'cancelled', 'failed', 'succeeded'"


def _bucket(seconds):
    whens = " ".join(f"WHEN {seconds} <= {bound} THEN {index}" for index, bound in enumerate(BUCKETS))
    return f"CASE {whens} ELSE -1 END"


def _seconds(vendor, row):
    if vendor == "postgresql":
        return f"EXTRACT(EPOCH FROM ({row}.finished_at - {row}.started_at))"
    return f"((julianday({row}.finished_at) - julianday({row}.started_at)) * 86400.0)"


def _duration_delta(row, sign):
    seconds = _seconds("postgresql", row)
    return (
        f"IF {row}.state IN ({FINAL}) AND {row}.started_at IS NOT NULL AND {row}.finished_at IS NOT NULL THEN "
        f"INSERT INTO cells_tally (family, a, b, bucket, n, seconds) VALUES ('durations', {row}.kind, {row}.state, "
        f"{_bucket(seconds)}, {sign}1, {sign}{seconds}); END IF;"
    )


POSTGRES_FORWARD = f"""
CREATE OR REPLACE FUNCTION cells_instance_tally() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.state = NEW.state AND OLD.region_id = NEW.region_id THEN
        RETURN NULL;
    END IF;
    IF TG_OP <> 'INSERT' THEN
        INSERT INTO cells_tally (family, a, b, bucket, n, seconds)
            VALUES ('instances', OLD.region_id::text, OLD.state, -1, -1, 0);
    END IF;
    IF TG_OP <> 'DELETE' THEN
        INSERT INTO cells_tally (family, a, b, bucket, n, seconds)
            VALUES ('instances', NEW.region_id::text, NEW.state, -1, 1, 0);
    END IF;
    RETURN NULL;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER cells_instance_tally AFTER INSERT OR DELETE OR UPDATE OF state, region_id ON cells_instance
    FOR EACH ROW EXECUTE FUNCTION cells_instance_tally();

CREATE OR REPLACE FUNCTION cells_operation_tally() RETURNS trigger AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        IF TG_OP = 'DELETE' OR OLD.kind <> NEW.kind OR OLD.state <> NEW.state THEN
            INSERT INTO cells_tally (family, a, b, bucket, n, seconds) VALUES ('operations', OLD.kind, OLD.state, -1, -1, 0);
        END IF;
        {_duration_delta("OLD", "-")}
    END IF;
    IF TG_OP <> 'DELETE' THEN
        IF TG_OP = 'INSERT' OR OLD.kind <> NEW.kind OR OLD.state <> NEW.state THEN
            INSERT INTO cells_tally (family, a, b, bucket, n, seconds) VALUES ('operations', NEW.kind, NEW.state, -1, 1, 0);
        END IF;
        {_duration_delta("NEW", "+")}
    END IF;
    RETURN NULL;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER cells_operation_tally AFTER INSERT OR DELETE OR UPDATE OF kind, state, started_at, finished_at
    ON cells_operation FOR EACH ROW EXECUTE FUNCTION cells_operation_tally();
"""
POSTGRES_BACKWARD = """
DROP TRIGGER IF EXISTS cells_instance_tally ON cells_instance;
DROP FUNCTION IF EXISTS cells_instance_tally();
DROP TRIGGER IF EXISTS cells_operation_tally ON cells_operation;
DROP FUNCTION IF EXISTS cells_operation_tally();
"""


def _fill(vendor):
    seconds = _seconds(vendor, "o")
    return (
        "INSERT INTO cells_tally (family, a, b, bucket, n, seconds) "
        "SELECT 'instances', CAST(region_id AS TEXT), state, -1, COUNT(*), 0.0 FROM cells_instance "
        "GROUP BY region_id, state "
        "UNION ALL SELECT 'operations', kind, state, -1, COUNT(*), 0.0 FROM cells_operation GROUP BY kind, state "
        f"UNION ALL SELECT 'durations', o.kind, o.state, {_bucket(seconds)}, COUNT(*), SUM({seconds}) "
        f"FROM cells_operation o WHERE o.state IN ({FINAL}) AND o.started_at IS NOT NULL "
        f"AND o.finished_at IS NOT NULL GROUP BY o.kind, o.state, {_bucket(seconds)}"
    )


def forward(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":  # SQLite: cells.sqlite_triggers, after every migrate
        schema_editor.execute(POSTGRES_FORWARD, params=None)
    schema_editor.execute(_fill(vendor), params=None)


def backward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(POSTGRES_BACKWARD, params=None)


class Migration(migrations.Migration):

    dependencies = [
        ('cells', '0012_reef_dedicated_to'),
    ]

    operations = [
        migrations.CreateModel(
            name='Tally',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('family', models.CharField(help_text='instances, operations or durations.', max_length=16)),
                ('a', models.CharField(help_text="The region id (instances) or the operation's kind.", max_length=64)),
                ('b', models.CharField(help_text='The state.', max_length=32)),
                ('bucket', models.SmallIntegerField(default=-1, help_text='durations: the histogram bucket (-1: past the last).')),
                ('n', models.BigIntegerField()),
                ('seconds', models.FloatField(default=0.0)),
            ],
            options={
                'db_table': 'cells_tally',
            },
        ),
        migrations.RunPython(forward, backward),
    ]
