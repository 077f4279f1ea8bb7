"""The environment every AWS test runs in: fake credentials, no shared config or profile, no instance metadata —
nothing can reach AWS; moto and botocore's ``Stubber`` answer instead."""


def offline_aws(monkeypatch, tmp_path, region: str, **extra_env: str) -> None:
    """Set the offline AWS environment for ``region`` (plus ``extra_env``, e.g. a pool's secret variable)."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": region, "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"), "AWS_CONFIG_FILE": str(tmp_path / "none"),
        **extra_env,
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
