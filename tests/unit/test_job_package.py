"""What `ray job submit --working-dir .` uploads: Ray's own packager, run on this checkout with no extra excludes
(the README's command), stays far below the job API's request limit and still carries the job's code."""

from __future__ import annotations

import zipfile
from pathlib import Path

from ray._private.runtime_env.packaging import GCS_STORAGE_MAX_SIZE, create_package

ROOT = Path(__file__).resolve().parents[2]


def test_the_working_dir_package_carries_the_job_and_not_the_benchmark_records(tmp_path):
    package = tmp_path / "working_dir.zip"
    create_package(str(ROOT), package, include_gitignore=True)
    names = set(zipfile.ZipFile(package).namelist())
    assert {"train_job.py", "serve_app.py", "hsd_ray/config.py", "pyproject.toml"} <= names
    assert not any(n.startswith(("bench/results/", ".git/", ".venv/", "runs/")) for n in names)
    # the job API refuses a body over GCS_STORAGE_MAX_SIZE (100 MiB); the records alone grew to 99 MB
    assert package.stat().st_size < GCS_STORAGE_MAX_SIZE // 10, package.stat().st_size
