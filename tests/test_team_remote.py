"""Working as a team: a shared DVC remote and shared experiments, with real git and DVC.

One project (the real dvc.yaml; only `model` → `train`, on a tiny model and a seed preference
file) is run, committed, pushed to a bare git repository and to a local-directory DVC remote
(real DVC storage). Then its cache and outputs are wiped and pulled back, and an experiment is
run with `dvc exp run --set-param`, shared with `dvc exp push` and seen from a fresh clone.
The same round trip and experiment sharing then go through an SSH remote: a real SSH/SFTP
server on 127.0.0.1 (:mod:`tests.sshd`) that the test starts and stops, reached by dvc-ssh
with a key file, as a team's server would be.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.stages.test_train import QUESTIONS, _pairs_file
from tests.test_dvc_pipeline import _dvc, copy_pipeline, run_dvc

pytestmark = pytest.mark.slow
SEED = "data/seed_pairs.parquet"


def _git(cwd: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True)
    return done.stdout


def _ran(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


def _identity(repo: Path) -> None:
    # `dvc exp run` commits experiment refs: the repository needs an author.
    _git(repo, "config", "user.name", "icon2 test")
    _git(repo, "config", "user.email", "icon2@example.invalid")


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, Path]:
    """Alice's project after `dvc repro train`, committed and pushed to git and DVC remotes."""
    base = tmp_path_factory.mktemp("team")
    alice, origin, storage = base / "alice", base / "origin.git", base / "storage"
    # data/features.jsonl is in git, as in a clone: the check refuses an input path that a
    # stage of dvc.yaml reads and nothing provides, whichever stages a command runs.
    copy_pipeline(alice, "data/features.jsonl")
    rows = [(q, f"A careful answer to: {q}", "No.", "train") for q in QUESTIONS[:4]]
    (alice / SEED).parent.mkdir(parents=True, exist_ok=True)
    _pairs_file(alice / SEED, rows)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["base"]["model"] = str(tiny_model_dir)
    params["train"].update(pairs=SEED, max_steps=1, per_device_train_batch_size=2, max_length=64)
    (alice / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _git(base, "init", "-q", "--bare", str(origin))
    _git(alice, "init", "-q")
    _identity(alice)
    _dvc(alice, "init", "-q")
    _dvc(alice, "remote", "add", "-d", "storage", str(storage))
    _git(alice, "add", "-A")
    _git(alice, "commit", "-q", "-m", "pipeline, params, seed pairs and the shared remote")
    assert _ran(_dvc(alice, "repro", "train")) == {"check", "model", "train"}
    _git(alice, "add", "-A")
    _git(alice, "commit", "-q", "-m", "baseline: model and train on a seed file")
    _git(alice, "remote", "add", "origin", str(origin))
    _git(alice, "push", "-q", "origin", "HEAD:refs/heads/main")
    _dvc(alice, "push")
    return {"alice": alice, "origin": origin, "storage": storage, "base": base}


def test_live_curves_reach_plots_and_exp_show(team: dict[str, Path]) -> None:
    # dvclive's per-step series are plots (the stages this test never ran have none).
    plots = json.loads(_dvc(team["alice"], "plots", "show", "--json"))["data"]
    live = "data/train/live/plots/metrics/train/"
    assert {
        f"{live}loss.tsv",
        f"{live}rewards/accuracies.tsv",
        f"{live}rewards/margins.tsv",
    } <= set(plots)
    shown = json.loads(_dvc(team["alice"], "exp", "show", "--json"))
    metrics = shown[0]["data"]["metrics"]["data/train/live/metrics.json"]["data"]
    assert {"loss", "rewards"} <= set(metrics["train"]) and metrics["step"] == 1


def test_push_wipe_pull_is_up_to_date(team: dict[str, Path]) -> None:
    alice = team["alice"]
    assert any((team["storage"] / "files" / "md5").rglob("*")), "nothing reached the remote"
    shutil.rmtree(alice / ".dvc" / "cache")
    for out in ("data/model", "data/train/model"):
        shutil.rmtree(alice / out)
    assert "train" in json.loads(_dvc(alice, "status", "train", "--json"))
    _dvc(alice, "pull", "train", "--with-deps")
    assert (alice / "data/train/model/model.safetensors").is_file()
    assert json.loads(_dvc(alice, "status", "train", "--json")) == {}
    repro = _dvc(alice, "repro", "train")
    assert not _ran(repro) and "up to date" in repro


def test_experiments_are_shared_through_git_and_the_remote(team: dict[str, Path]) -> None:
    alice, origin = team["alice"], team["origin"]
    out = _dvc(alice, "exp", "run", "train", "-n", "beta-0.2", "--set-param", "train.beta=0.2")
    # The model stage does not read train.*; the check reruns and changes nothing downstream.
    assert _ran(out) == {"check", "train"}
    _dvc(alice, "exp", "push", "origin", "beta-0.2")
    bob = team["base"] / "bob"
    _git(team["base"], "clone", "-q", "-b", "main", str(origin), str(bob))
    _identity(bob)
    _dvc(bob, "exp", "pull", "origin", "beta-0.2")
    shown = _dvc(bob, "exp", "show", "--json")
    assert "beta-0.2" in shown
    # One row for the workspace, one per baseline commit; experiments hang off their baseline.
    experiments = [e for row in json.loads(shown) for e in row.get("experiments") or []]
    [exp] = [e for e in experiments if e["name"] == "beta-0.2"]
    exp_params = exp["revs"][0]["data"]["params"]["params.yaml"]["data"]
    assert exp_params["train"]["beta"] == 0.2
    # exp pull brought the experiment's outputs too: checking it out needs no training.
    # (`dvc exp apply` would also try to check out the stages this test never runs.)
    _dvc(bob, "exp", "branch", "beta-0.2", "exp-beta")
    _git(bob, "checkout", "-q", "exp-beta")
    _dvc(bob, "checkout", "train", "--with-deps")
    assert (bob / "data/train/model/model.safetensors").is_file()
    assert json.loads(_dvc(bob, "status", "train", "--json")) == {}
    assert yaml.safe_load((bob / "params.yaml").read_text())["train"]["beta"] == 0.2


def test_unreachable_remote_is_one_clear_error(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _git(tmp_path, "init", "-q")
    _dvc(tmp_path, "init", "-q")
    (tmp_path / "data.txt").write_text("shared\n")
    _dvc(tmp_path, "add", "data.txt")
    _dvc(tmp_path, "remote", "add", "-d", "gone", f"http://127.0.0.1:{port}/store")
    done = run_dvc(tmp_path, "push")
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
    assert errors and any(f"Cannot connect to host 127.0.0.1:{port}" in e for e in errors)
    assert errors[-1] == "ERROR: failed to push data to the cloud - 1 files failed to upload"


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[dict[str, object]]:
    """An SSH server on 127.0.0.1 that accepts one client key and nothing else."""
    import asyncssh

    keys = tmp_path / "keys"
    keys.mkdir()
    client, host = (asyncssh.generate_private_key("ssh-ed25519") for _ in range(2))
    client.write_private_key(str(keys / "id_ed25519"))
    client.write_public_key(str(keys / "id_ed25519.pub"))
    host.write_private_key(str(keys / "host"))
    port_file = tmp_path / "port"
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.sshd", "--host-key", str(keys / "host"),
         "--authorized", str(keys / "id_ed25519.pub"), "--port-file", str(port_file)],
        cwd=REPO,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists():
            assert server.poll() is None, "the SSH server exited before listening"
            assert time.monotonic() < deadline, "the SSH server did not start in 60 s"
            time.sleep(0.1)
        port = int(port_file.read_text())
        yield {"port": port, "key": keys / "id_ed25519"}
    finally:
        server.terminate()
        server.wait(timeout=30)


def _ssh_remote(repo: Path, name: str, url: str, key: Path) -> None:
    _dvc(repo, "remote", "add", "--local", name, url)  # config.local: not committed
    _dvc(repo, "remote", "modify", "--local", name, "keyfile", str(key))
    _dvc(repo, "remote", "modify", "--local", name, "user", os.environ.get("USER", "icon2"))


def test_ssh_remote_round_trip_and_shared_experiments(
    team: dict[str, Path], sshd: dict[str, object]
) -> None:
    alice, store = team["alice"], team["base"] / "ssh-storage"
    key = sshd["key"]
    assert isinstance(key, Path)
    url = f"ssh://127.0.0.1:{sshd['port']}{store}"
    _ssh_remote(alice, "server", url, key)
    _dvc(alice, "push", "-r", "server")
    assert any((store / "files" / "md5").rglob("*")), "nothing reached the SSH remote"
    shutil.rmtree(alice / ".dvc" / "cache")
    for out in ("data/model", "data/train/model"):
        shutil.rmtree(alice / out)
    _dvc(alice, "pull", "-r", "server", "train", "--with-deps")
    assert (alice / "data/train/model/model.safetensors").is_file()
    assert json.loads(_dvc(alice, "status", "train", "--json")) == {}
    assert not _ran(_dvc(alice, "repro", "train"))
    # An experiment's outputs travel through the SSH remote to a clone that has no cache.
    out = _dvc(alice, "exp", "run", "train", "-n", "beta-0.3", "--set-param", "train.beta=0.3")
    assert "train" in _ran(out)
    _dvc(alice, "exp", "push", "-r", "server", "origin", "beta-0.3")
    carol = team["base"] / "carol"
    _git(team["base"], "clone", "-q", "-b", "main", str(team["origin"]), str(carol))
    _identity(carol)
    _ssh_remote(carol, "server", url, key)
    _dvc(carol, "exp", "pull", "-r", "server", "origin", "beta-0.3")
    _dvc(carol, "exp", "branch", "beta-0.3", "exp-beta-3")
    _git(carol, "checkout", "-q", "exp-beta-3")
    _dvc(carol, "checkout", "train", "--with-deps")
    assert (carol / "data/train/model/model.safetensors").is_file()
    assert json.loads(_dvc(carol, "status", "train", "--json")) == {}
    assert yaml.safe_load((carol / "params.yaml").read_text())["train"]["beta"] == 0.3


def test_ssh_remote_refuses_a_key_it_does_not_know(tmp_path: Path, sshd: dict[str, object]) -> None:
    import asyncssh

    stranger = tmp_path / "stranger"
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(stranger))
    _git(tmp_path, "init", "-q")
    _dvc(tmp_path, "init", "-q")
    (tmp_path / "data.txt").write_text("shared\n")
    _dvc(tmp_path, "add", "data.txt")
    _ssh_remote(tmp_path, "server", f"ssh://127.0.0.1:{sshd['port']}{tmp_path / 'store'}", stranger)
    done = run_dvc(tmp_path, "push", "-r", "server")
    assert done.returncode != 0
    assert not (tmp_path / "store").exists()
    errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
    assert errors and "Permission denied for user" in errors[-1], done.stderr[-2000:]
    assert "127.0.0.1" in errors[-1]
