"""The audit log is append-only in the database: no code path (nor a slip in a shell) rewrites or deletes history.

PostgreSQL refuses any DELETE of an audit row, and any UPDATE except the one Django makes when an actor's account
is deleted (``actor_id`` set to NULL; ``actor_label`` keeps the name). TRUNCATE — what a test database's flush
uses, and what an operator would use for a deliberate purge — is not a row change and is not stopped. On SQLite
(the embedded development database) the rule is not installed, so ``manage.py flush`` keeps working there.
"""
from django.db import migrations

FORWARD = """
CREATE OR REPLACE FUNCTION portal_auditevent_append_only() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'audit_append_only: audit event % cannot be deleted', OLD.id
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.actor_id IS NULL AND (to_jsonb(NEW) - 'actor_id') = (to_jsonb(OLD) - 'actor_id') THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'audit_append_only: audit event % cannot be changed', OLD.id USING ERRCODE = 'check_violation';
END $$ LANGUAGE plpgsql;
CREATE TRIGGER portal_auditevent_append_only BEFORE UPDATE OR DELETE ON portal_auditevent
    FOR EACH ROW EXECUTE FUNCTION portal_auditevent_append_only();
"""
BACKWARD = """
DROP TRIGGER IF EXISTS portal_auditevent_append_only ON portal_auditevent;
DROP FUNCTION IF EXISTS portal_auditevent_append_only();
"""


def forward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(FORWARD, params=None)


def backward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(BACKWARD, params=None)


class Migration(migrations.Migration):
    dependencies = [("portal", "0003_audit_log")]
    operations = [migrations.RunPython(forward, backward)]
