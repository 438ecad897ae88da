import importlib.util
import io
import json
import tarfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "replication" / "import_gpu_session.py"


@pytest.fixture(scope="module")
def importer():
    spec = importlib.util.spec_from_file_location("import_gpu_session", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def archive(path: Path, files: dict[str, bytes], link: str | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if link:
            info = tarfile.TarInfo(link)
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
    return path


MANIFEST = json.dumps({"runs": []}).encode()


def test_imports_the_study_and_the_gpu_check(tmp_path, importer):
    src = tmp_path / "device"
    src.mkdir()
    (src / "gpu-check.md").write_text("# GPU check\n")
    archive(src / "study.tar.gz", {"full/study.json": MANIFEST, "full/table.md": b"| table |\n"})
    results = tmp_path / "results"
    (results / "seed_blog" / "full").mkdir(parents=True)
    (results / "seed_blog" / "full" / "stale.md").write_text("old")
    assert importer.main([str(src), "--results", str(results)]) == 0
    assert (results / "bench" / "gpu-check.md").read_text() == "# GPU check\n"
    assert (results / "seed_blog" / "full" / "table.md").exists()
    assert not (results / "seed_blog" / "full" / "stale.md").exists()  # the folder is swapped whole
    assert sorted(p.name for p in (results / "seed_blog").iterdir()) == ["full"]  # no staging left


@pytest.mark.parametrize("files,link,message", [
    ({"full/../../evil.txt": b"x", "full/study.json": MANIFEST}, None, "refusing"),
    ({"/abs.txt": b"x"}, None, "refusing"),
    ({"full/study.json": MANIFEST}, "full/link", "refusing"),
    ({"elsewhere/study.json": MANIFEST}, None, "one top folder"),
])
def test_refuses_archives_that_escape_or_misplace(tmp_path, importer, files, link, message):
    src = tmp_path / "device"
    src.mkdir()
    archive(src / "study.tar.gz", files, link)
    results = tmp_path / "results"
    with pytest.raises(SystemExit, match=message):
        importer.main([str(src), "--results", str(results)])
    assert not (tmp_path / "evil.txt").exists() and not list((results / "seed_blog").glob("*"))


def test_a_malformed_record_stops_the_import(tmp_path, importer):
    src = tmp_path / "device"
    src.mkdir()
    manifest = json.dumps({"runs": [{"run_id": "individual-0"}]}).encode()
    archive(src / "study.tar.gz", {"full/study.json": manifest, "full/runs/individual-0.json": b"{not json"})
    results = tmp_path / "results"
    with pytest.raises(SystemExit, match="unreadable run record"):
        importer.main([str(src), "--results", str(results)])
    assert not (results / "seed_blog" / "full").exists()


def test_stored_teacher_weights_of_runs_the_archive_holds_are_kept(tmp_path, importer):
    stored_record = next((SCRIPT.parents[1] / "results" / "seed_blog" / "smoke" / "runs").glob("individual-*.json"))
    rid = stored_record.stem
    manifest = json.dumps({"runs": [{"run_id": rid}]}).encode()
    src = tmp_path / "device"
    src.mkdir()
    archive(src / "study.tar.gz", {"full/study.json": manifest, f"full/runs/{rid}.json": stored_record.read_bytes()})
    target = tmp_path / "results" / "seed_blog" / "full"
    (target / "runs" / rid).mkdir(parents=True)
    (target / "runs" / rid / "final.pt").write_bytes(b"teacher weights")
    (target / "runs" / "gone-000000000000").mkdir()
    (target / "runs" / "gone-000000000000" / "final.pt").write_bytes(b"weights of a run the archive lacks")
    assert importer.main([str(src), "--results", str(tmp_path / "results")]) == 0
    assert (target / "runs" / rid / "final.pt").read_bytes() == b"teacher weights"
    assert not (target / "runs" / "gone-000000000000").exists()
