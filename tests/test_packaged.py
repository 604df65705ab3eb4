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
