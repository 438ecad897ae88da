"""Bring the files of a run of benchmarks/gpu_session.sh on a GPU machine into results/:

    python replication/import_gpu_session.py FOLDER      # the folder its $OUT files were copied back into

- ``gpu-check.md`` -> ``results/bench/gpu-check.md`` (with ``machine.txt`` beside it);
- ``study.tar.gz`` -> ``results/seed_blog/<profile>/``: every member must be a plain file or
  folder under ``<profile>/`` (no absolute paths, ``..`` or links), the manifest and every
  record must validate, and the folder is swapped in whole (the script started from the
  stored folder, so the archive holds its earlier runs too); stored weights (the teachers'
  ``final.pt``, which the archive does not carry) of runs the archive still holds are kept.

Then ``python replication/embed_tables.py`` puts the table into the documents.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mutualbench.core.errors import UserError  # noqa: E402
from mutualbench.storage.records import read_record  # noqa: E402

PROFILES = ("full", "cpu", "smoke")


def safe_members(tar: tarfile.TarFile) -> tuple[str, list[tarfile.TarInfo]]:
    members = tar.getmembers()
    tops = set()
    for m in members:
        path = PurePosixPath(m.name)
        if path.is_absolute() or ".." in path.parts or not (m.isfile() or m.isdir()):
            raise SystemExit(f"refusing {m.name!r}: archive members must be plain files or folders inside one folder")
        tops.add(path.parts[0])
    if len(tops) != 1 or next(iter(tops)) not in PROFILES:
        raise SystemExit(f"expected one top folder named after a profile {PROFILES}, found {sorted(tops)}")
    return tops.pop(), members


def import_study(archive: Path, results: Path) -> Path:
    with tarfile.open(archive, "r:gz") as tar:
        profile, members = safe_members(tar)
        staging = Path(tempfile.mkdtemp(prefix=f".{profile}-import-", dir=results))
        try:
            tar.extractall(staging, members=members, filter="data")
            new = staging / profile
            try:
                manifest = json.loads((new / "study.json").read_text())
                for entry in manifest["runs"]:
                    path = new / "runs" / f"{entry['run_id']}.json"
                    if path.exists():
                        read_record(path)
            except (OSError, ValueError, KeyError, TypeError, UserError) as e:
                raise SystemExit(f"{archive}: not a valid study ({e}); nothing imported") from None
            target = results / profile
            old = staging / "previous"
            if target.exists():
                # the archive holds no weights: keep the stored weights (teachers) of runs it still has
                for weights in target.glob("runs/*/final.pt"):
                    if (new / "runs" / f"{weights.parent.name}.json").exists():
                        (new / "runs" / weights.parent.name).mkdir(parents=True, exist_ok=True)
                        shutil.copy2(weights, new / "runs" / weights.parent.name / "final.pt")
                target.rename(old)
            new.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--results", type=Path, default=ROOT / "results")
    args = parser.parse_args(argv)
    done = []
    check = args.folder / "gpu-check.md"
    if check.exists():
        (args.results / "bench").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(check, args.results / "bench" / "gpu-check.md")
        done.append(str(args.results / "bench" / "gpu-check.md"))
        if (args.folder / "machine.txt").exists():
            shutil.copyfile(args.folder / "machine.txt", args.results / "bench" / "gpu-machine.txt")
    archive = args.folder / "study.tar.gz"
    if archive.exists():
        (args.results / "seed_blog").mkdir(parents=True, exist_ok=True)
        done.append(str(import_study(archive, args.results / "seed_blog")))
    if not done:
        print(f"nothing to import in {args.folder}: expected gpu-check.md and/or study.tar.gz", file=sys.stderr)
        return 2
    print("imported: " + ", ".join(done))
    return 0


if __name__ == "__main__":
    sys.exit(main())
