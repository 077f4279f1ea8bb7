"""Where the local drivers keep their files (under ``CELLHUB_VAR_DIR``), and an atomic write."""
import os
import tempfile
from pathlib import Path

from django.conf import settings


def var_path(*parts: str) -> Path:
    """A folder under the hub's var directory, created on first use."""
    path = Path(settings.CELLHUB["VAR_DIR"]).joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path``'s content in one step: readers see the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
