"""The de-quantised model cache: built once, reused by every install of the same GGUF."""

import json
import os

import pytest

from dflora_core.models import packaged


@pytest.fixture
def fake_gguf(tmp_path, monkeypatch):
    src = tmp_path / "pkg" / "model.gguf"
    src.parent.mkdir()
    src.write_bytes(b"GGUF" + bytes(range(256)) * 64)
    monkeypatch.setenv("DFLORA_CACHE", str(tmp_path / "cache"))
    spec = packaged.PackagedGGUF(key="fake", package="fake_pkg", install="-", licence="-")
    monkeypatch.setattr(packaged.PackagedGGUF, "gguf_path", lambda self: src)
    built = []

    def build(spec, src, folder):
        folder.mkdir(parents=True, exist_ok=True)
        st = src.stat()
        info = {"gguf_size": st.st_size, "gguf_mtime": int(st.st_mtime), "gguf_sha256": packaged.sha256_file(src)}
        (folder / "dflora_identity.json").write_text(json.dumps(info))
        built.append(folder)

    monkeypatch.setattr(packaged, "_build_cache", build)
    return spec, src, built


def test_cache_is_built_once_and_survives_a_reinstall(fake_gguf):
    spec, src, built = fake_gguf
    folder = packaged.cached_folder(spec)
    assert len(built) == 1 and packaged.cached_folder(spec) == folder and len(built) == 1
    st = src.stat()
    os.utime(src, (st.st_atime, st.st_mtime + 3600))  # the same file installed again (another venv)
    assert packaged.cached_folder(spec) == folder and len(built) == 1
    src.write_bytes(src.read_bytes()[:-1] + b"x")  # other bytes of the same size: rebuild
    os.utime(src, (st.st_atime, st.st_mtime + 7200))
    packaged.cached_folder(spec)
    assert len(built) == 2


def test_two_processes_building_the_cache_at_once_build_it_once(tmp_path, monkeypatch):
    """A grid's --jobs start together: the first builds (slowly), the second waits and finds it built."""
    import multiprocessing
    import time

    src = tmp_path / "pkg" / "model.gguf"
    src.parent.mkdir()
    src.write_bytes(b"GGUF" + bytes(range(256)) * 64)
    monkeypatch.setenv("DFLORA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(packaged.PackagedGGUF, "gguf_path", lambda self: src)
    log = tmp_path / "conversions.log"

    def convert(spec, src, out):  # the slow de-quantisation, faked: a marker per conversion
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(1.0)
        (out / "model.safetensors").write_bytes(b"w" * 1000)
        st = src.stat()
        info = {"gguf_size": st.st_size, "gguf_mtime": int(st.st_mtime), "gguf_sha256": packaged.sha256_file(src)}
        (out / "dflora_identity.json").write_text(json.dumps(info))

    monkeypatch.setattr(packaged, "_convert", convert)
    spec = packaged.PackagedGGUF(key="fake", package="fake_pkg", install="-", licence="-")
    ctx = multiprocessing.get_context("fork")  # the children inherit the patched conversion
    procs = [ctx.Process(target=packaged.cached_folder, args=(spec,)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert len(log.read_text().splitlines()) == 1  # one conversion, not two racing rmtree/replace
    folder = tmp_path / "cache" / "models" / "fake"
    assert (folder / "model.safetensors").read_bytes() == b"w" * 1000
    assert sorted(p.name for p in folder.parent.iterdir() if not p.name.startswith(".fake.lock")) == ["fake"]
