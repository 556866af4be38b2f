"""Engine store: atomic publish, verification, fallback, pruning, permissions, crash safety."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from iapc.engines.store import CorruptVersion, EngineStore


def _payload(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def test_publish_makes_a_verified_current_version_with_manifest(tmp_path):
    store = EngineStore(tmp_path / "store", keep=3)
    assert store.current() is None
    onnx = _payload(tmp_path, "a.onnx", b"onnx-bytes")
    engine = _payload(tmp_path, "a.engine", b"engine-bytes")
    version = store.publish(onnx, engine, {"model": "tiny", "step": 12, "parity": {"agreement": 1.0}})
    assert version.name == "v000001"
    assert store.current() == version
    assert version.onnx_path.read_bytes() == b"onnx-bytes"
    assert version.engine_path.read_bytes() == b"engine-bytes"
    manifest = version.manifest
    assert manifest["model"] == "tiny" and manifest["step"] == 12
    assert set(manifest["files"]) == {"model.onnx", "model.engine"}
    assert manifest["format"] == "iapc-engine-store/1" and manifest["created"].endswith("Z")
    assert (tmp_path / "store" / "CURRENT").read_text().strip() == "v000001"


def test_owner_only_permissions(tmp_path):
    store = EngineStore(tmp_path / "store")
    version = store.publish(_payload(tmp_path, "a.onnx", b"x"))
    for folder in (store.root, store.versions_dir, version.path):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for file in version.path.iterdir():
        assert stat.S_IMODE(file.stat().st_mode) == 0o600


def test_hash_mismatch_falls_back_to_previous_good_version(tmp_path, caplog):
    store = EngineStore(tmp_path / "store", keep=5)
    first = store.publish(_payload(tmp_path, "1.onnx", b"first" * 100))
    second = store.publish(_payload(tmp_path, "2.onnx", b"second" * 100))
    data = bytearray(second.onnx_path.read_bytes())
    data[10] ^= 0xFF  # flip one byte
    second.onnx_path.write_bytes(bytes(data))

    resolution = store.resolve_current()
    assert resolution.version == first
    assert any("v000002" in p and "sha256 mismatch" in p for p in resolution.problems)
    with pytest.raises(CorruptVersion, match="sha256 mismatch"):
        store.load_verified("v000002")
    with caplog.at_level("WARNING"):
        assert store.current() == first
    assert "sha256 mismatch" in caplog.text


def test_missing_manifest_and_unknown_pointer_are_reported(tmp_path):
    store = EngineStore(tmp_path / "store")
    first = store.publish(_payload(tmp_path, "1.onnx", b"one"))
    second = store.publish(_payload(tmp_path, "2.onnx", b"two"))
    (second.path / "manifest.json").unlink()
    resolution = store.resolve_current()
    assert resolution.version == first and "no manifest.json" in resolution.problems[0]
    assert [v.name for v in store.versions()] == ["v000001"]  # the damaged one is not listed
    (store.root / "CURRENT").write_text("garbage\n")
    resolution = store.resolve_current()
    assert resolution.version == first and "does not name a version" in resolution.problems[0]


def test_pruning_keeps_last_k_and_never_the_current(tmp_path):
    store = EngineStore(tmp_path / "store", keep=2)
    for i in range(5):
        store.publish(_payload(tmp_path, f"{i}.onnx", bytes([i]) * 10))
    assert [v.name for v in store.versions()] == ["v000004", "v000005"]
    # point CURRENT back at an old version (a rollback), then prune with keep=1
    (store.root / "CURRENT").write_text("v000004\n")
    store.keep = 1
    assert store.prune() == []  # v000005 is the newest, v000004 is current: both stay
    assert [v.name for v in store.versions()] == ["v000004", "v000005"]


def test_bad_arguments_are_user_errors(tmp_path):
    store = EngineStore(tmp_path / "store")
    with pytest.raises(Exception, match="does not exist"):
        store.publish(tmp_path / "missing.onnx")
    with pytest.raises(Exception, match="may not set"):
        store.publish(_payload(tmp_path, "a.onnx", b"x"), manifest_extra={"files": {}})
    with pytest.raises(Exception, match="at least 1"):
        EngineStore(tmp_path / "s2", keep=0)


def test_readers_racing_a_writer_only_see_complete_versions(tmp_path):
    store = EngineStore(tmp_path / "store", keep=2)
    contents = {}  # version name -> bytes published under it
    store.publish(_payload(tmp_path, "0.onnx", b"\x00" * 200_000))
    contents["v000001"] = b"\x00" * 200_000
    done = threading.Event()
    errors: list[str] = []
    seen: list[str] = []

    def writer():
        for i in range(1, 16):
            data = bytes([i]) * 200_000
            contents[f"v{i + 1:06d}"] = data
            store.publish(_payload(tmp_path, f"{i}.onnx", data))
        done.set()

    def reader():
        reader_store = EngineStore(tmp_path / "store", keep=2)
        last = 0
        while not done.is_set():
            resolution = reader_store.resolve_current()
            version = resolution.version
            if version is None or resolution.problems:
                errors.append(f"{version} {resolution.problems}")
                continue
            try:
                data = version.onnx_path.read_bytes()
            except FileNotFoundError:
                continue  # pruned after verification: the next read gets the new current
            if data != contents[version.name]:
                errors.append(f"{version.name} has the wrong content")
            if version.number < last:
                errors.append(f"went back from v{last} to {version.name}")
            last = version.number
            seen.append(version.name)

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors[:5]
    assert len(seen) > 5
    assert store.current().name == "v000016"


_KILLED_WRITER = textwrap.dedent("""
    import sys, time
    from iapc.engines import store as store_module
    from iapc.engines.store import EngineStore

    root, onnx, stage = sys.argv[1], sys.argv[2], sys.argv[3]

    def pause(original):
        def paused(*args, **kwargs):
            if stage == "before-manifest" and not str(args[0]).endswith("manifest.json"):
                return original(*args, **kwargs)
            print("PAUSED", flush=True)
            time.sleep(60)
        return paused

    if stage == "before-manifest":  # files copied into staging, manifest not yet written
        store_module._write_durably = pause(store_module._write_durably)
    elif stage == "before-pointer":  # version folder renamed into place, CURRENT not yet replaced
        EngineStore._point_current_to = pause(EngineStore._point_current_to)
    if stage == "loop":  # publish continuously until killed at an arbitrary point
        print("PAUSED", flush=True)
        while True:
            EngineStore(root, keep=3).publish(onnx)
    EngineStore(root, keep=3).publish(onnx)
""")


@pytest.mark.parametrize("stage", ["before-manifest", "before-pointer", "loop"])
def test_writer_killed_mid_publish_leaves_previous_version_loadable(tmp_path, stage):
    store = EngineStore(tmp_path / "store", keep=3)
    previous = store.publish(_payload(tmp_path, "old.onnx", b"old" * 1000))
    new_onnx = _payload(tmp_path, "new.onnx", os.urandom(2_000_000))
    child = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(store.root), str(new_onnx), stage],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "PAUSED"
    if stage == "loop":
        threading.Event().wait(0.3)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()

    resolution = store.resolve_current()
    assert resolution.problems == []
    assert resolution.version is not None
    if stage != "loop":
        assert resolution.version == previous  # the interrupted version never became current
    assert resolution.version.onnx_path.read_bytes() in (b"old" * 1000, new_onnx.read_bytes())
    # the next writer cleans up and publishes normally
    after = store.publish(_payload(tmp_path, "next.onnx", b"next"))
    assert store.current() == after
    assert not list(store.root.glob(".staging-*"))


def test_store_imports_no_torch():
    code = "import sys, iapc.engines.store; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
