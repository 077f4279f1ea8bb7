"""/metrics in production: closed without its token unless explicitly opened; the token always works."""
import pytest

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("token,opened,header,status", [
    ("", False, "", 403),                    # production default: closed, not silently open
    ("", True, "", 200),                     # CELLHUB_METRICS_OPEN=1: a private network scrapes it
    ("s3cret", False, "", 401),
    ("s3cret", False, "Bearer s3cret", 200),
    ("s3cret", True, "Bearer wrong", 401),   # a token set wins over "open"
])
def test_metrics_access(client, settings, token, opened, header, status):
    settings.CELLHUB = {**settings.CELLHUB, "METRICS_TOKEN": token, "METRICS_OPEN": opened}
    extra = {"HTTP_AUTHORIZATION": header} if header else {}
    assert client.get("/metrics", **extra).status_code == status
