"""Files users hand us load with weights_only; a refused object and a corrupt file get different one-line reasons."""

import os
import pickle

import pytest
import torch

from supernet.evaluation import CheckpointError, load_checkpoint
from supernet.safeload import UnreadableFile, load_weights_only


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_good_file_loads(tmp_path):
    p = tmp_path / "ok.pt"
    torch.save({"w": torch.arange(3.0), "n": 1}, p)
    got = load_weights_only(p)
    assert torch.equal(got["w"], torch.arange(3.0)) and got["n"] == 1


def test_an_object_that_runs_code_is_refused_and_named(tmp_path):
    marker = tmp_path / "ran"
    p = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(2), "x": _Payload(marker)}, p)
    with pytest.raises(UnreadableFile) as exc:
        load_weights_only(p)
    assert exc.value.unsafe and not marker.exists()
    msg = str(exc.value)
    assert msg.startswith(str(p)) and "refusing" in msg and "system" in msg and "\n" not in msg


@pytest.mark.parametrize("kind", ["garbage", "random", "plain_pickle", "truncated", "empty"])
def test_a_file_torch_did_not_write_is_corrupt_not_unsafe(tmp_path, kind):
    p = tmp_path / "bad.pt"
    if kind == "garbage":
        p.write_bytes(b"garbage\n" * 8)
    elif kind == "random":
        p.write_bytes(bytes(range(256)) * 4)
    elif kind == "plain_pickle":
        p.write_bytes(pickle.dumps({"a": 1}, protocol=5))
    elif kind == "truncated":
        good = tmp_path / "good.pt"
        torch.save({"w": torch.randn(4096)}, good)
        p.write_bytes(good.read_bytes()[:5000])
    else:
        p.write_bytes(b"")
    with pytest.raises(UnreadableFile) as exc:
        load_weights_only(p)
    assert not exc.value.unsafe
    msg = str(exc.value)
    assert "corrupt, truncated or not a PyTorch file" in msg and "\n" not in msg and "weights_only" not in msg


def test_checkpoint_errors_say_which(tmp_path):
    p = tmp_path / "supernet.pt"
    p.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"supernet\.pt is corrupt"):
        load_checkpoint(p)
    torch.save({"x": _Payload(tmp_path / "ran")}, p)
    with pytest.raises(CheckpointError, match=r"supernet\.pt holds objects other than tensors.*refusing"):
        load_checkpoint(p)
    assert not (tmp_path / "ran").exists()
