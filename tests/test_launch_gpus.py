"""One process per GPU: the commands and environments, without a GPU (Popen is faked)."""

from pathlib import Path

from mutualbench.studies import launch
from mutualbench.studies.request import StudyRequest


def test_one_replicate_process_per_gpu_each_on_its_seeds(monkeypatch):
    started = []

    class FakeProcess:
        def __init__(self, cmd, env):
            self.gpu = env["CUDA_VISIBLE_DEVICES"]
            started.append((cmd, self.gpu))

        def wait(self):
            return 3 if self.gpu == "1" else 0  # the second GPU's process fails

    monkeypatch.setattr("subprocess.Popen", FakeProcess)
    request = StudyRequest(Path("s.toml"), "full", Path("out"), data="d.tar.gz", seeds=3, ablations=False,
                           arms=["dml", "kd"])
    errors = launch.run_per_gpu(request, 2)
    assert [gpu for _, gpu in started] == ["0", "1"]
    for i, (cmd, _) in enumerate(started):
        assert cmd[2:] == ["mutualbench.cli", "replicate", "s.toml", "--profile", "full", "--out", "out", "--device",
                           "cuda", "--data", "d.tar.gz", "--seeds", "3", "--no-ablations", "--arms", "dml,kd",
                           "--shard", f"{i}/2",
                           "--no-report"]
    assert errors == ["GPU process 1 exited 3"]
