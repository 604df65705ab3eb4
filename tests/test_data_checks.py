"""Data files are verified when a task is read: against the manifest (size, md5), or by row counts
in a data root without one; merged rows and control characters are refused with ``file:line``."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import pytest

from dflora_core.data import TASKS, data_root, load_test, pool_report, sample_fewshot
from dflora_core.data import loaders as L
from dflora_core.data import manifest as M
from dflora_core.data.fewshot import POOL_FILES, TEST_FILES, fixed_split_paths
from dflora_core.errors import DataError

ROOT = data_root()
SST2_DEV = TEST_FILES["sst2"][0]


def _copy(dst: Path, rels, manifest: bool = False) -> None:
    for rel in rels:
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / rel, dst / rel)
    if manifest:
        shutil.copyfile(ROOT / M.MANIFEST_NAME, dst / M.MANIFEST_NAME)


def _keep_lines(path: Path, n: int) -> None:
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text("".join(lines[:n]), encoding="utf-8")


def _one_line_error(call, *patterns: str) -> str:
    with pytest.raises(DataError) as err:
        call()
    message = str(err.value)
    assert "\n" not in message, message
    for pattern in patterns:
        assert pattern in message, message
    return message


# --------------------------------------------------------------------------- manifest


def test_the_shipped_data_is_verified_against_the_manifest():
    for task, spec in TASKS.items():
        assert load_test(task).verification == "manifest", task
        assert sample_fewshot(task, 13).verification == "manifest", task
        assert sample_fewshot(task, 13, source="fixed").verification == "manifest", task
        assert len(load_test(task).examples) == spec.test_size, task
        if task in POOL_FILES:
            assert pool_report(task)["raw_rows"] == spec.pool_size, task


def test_a_header_only_test_file_is_refused_naming_it(tmp_path):
    _copy(tmp_path, [SST2_DEV], manifest=True)
    _keep_lines(tmp_path / SST2_DEV, 1)
    _one_line_error(lambda: load_test("sst2", root=tmp_path), SST2_DEV, "bytes", "872 rows")
    (tmp_path / M.MANIFEST_NAME).unlink()  # and in a root without a manifest
    _one_line_error(lambda: load_test("sst2", root=tmp_path), SST2_DEV, "no rows")


def test_a_truncated_test_file_is_refused_by_size_before_it_is_hashed(tmp_path, monkeypatch):
    _copy(tmp_path, [SST2_DEV], manifest=True)
    _keep_lines(tmp_path / SST2_DEV, 500)
    monkeypatch.setattr(M, "file_md5", lambda path: pytest.fail("hashed a file whose size is already wrong"))
    _one_line_error(lambda: load_test("sst2", root=tmp_path), SST2_DEV, "bytes", "expects 94,931")


def test_a_changed_file_of_the_same_size_is_refused_by_its_md5(tmp_path):
    _copy(tmp_path, [SST2_DEV], manifest=True)
    path = tmp_path / SST2_DEV
    path.write_text(path.read_text(encoding="utf-8").replace("\t1\n", "\t0\n", 1), encoding="utf-8")
    _one_line_error(lambda: load_test("sst2", root=tmp_path), SST2_DEV, "md5")


def test_each_file_is_hashed_once_per_process_until_it_changes(tmp_path, monkeypatch):
    _copy(tmp_path, [SST2_DEV], manifest=True)
    hashed: list[str] = []
    real = M.file_md5
    monkeypatch.setattr(M, "file_md5", lambda path: hashed.append(str(path)) or real(path))
    M._cached_md5.cache_clear()
    for _ in range(3):
        assert load_test("sst2", root=tmp_path).verification == "manifest"
    assert len(hashed) == 1
    st = (tmp_path / SST2_DEV).stat()
    os.utime(tmp_path / SST2_DEV, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    load_test("sst2", root=tmp_path)
    assert len(hashed) == 2


# --------------------------------------------------------------------------- roots without a manifest


def _rte_root(dst: Path) -> None:
    _copy(dst, [*POOL_FILES["rte"], *TEST_FILES["rte"], *fixed_split_paths("rte", 13)])


def test_a_root_without_manifest_is_verified_by_row_counts(tmp_path):
    _rte_root(tmp_path)
    assert load_test("rte", root=tmp_path).verification == "row counts"
    assert sample_fewshot("rte", 13, root=tmp_path).verification == "row counts"
    assert sample_fewshot("rte", 13, source="fixed", root=tmp_path).verification == "row counts"


def test_a_short_test_file_in_a_root_without_manifest_is_refused_by_its_row_count(tmp_path):
    _copy(tmp_path, [SST2_DEV])
    _keep_lines(tmp_path / SST2_DEV, 500)  # the header and 499 rows
    _one_line_error(lambda: load_test("sst2", root=tmp_path), SST2_DEV, "499 rows", "872")


def test_a_short_pool_or_fixed_split_in_a_root_without_manifest_is_refused_naming_it(tmp_path):
    _rte_root(tmp_path)
    train_rel, dev_rel = fixed_split_paths("rte", 13)
    with (tmp_path / dev_rel).open("a", encoding="utf-8") as f:
        f.write("99\tAn extra premise.\tAn extra hypothesis.\tentailment\n")
    _one_line_error(lambda: sample_fewshot("rte", 13, source="fixed", root=tmp_path), dev_rel, "33 rows", "32")
    pool_rel = POOL_FILES["rte"][0]
    _keep_lines(tmp_path / pool_rel, 2000)
    _one_line_error(lambda: sample_fewshot("rte", 13, root=tmp_path), pool_rel, "1,999 rows", "2,490")


def test_a_task_without_declared_sizes_is_accepted_but_flagged_unverified(tmp_path, monkeypatch):
    _rte_root(tmp_path)
    spec = dataclasses.replace(TASKS["rte"], test_size=None, pool_size=None)
    monkeypatch.setitem(TASKS, "rte", spec)
    _keep_lines(tmp_path / TEST_FILES["rte"][0], 200)
    test = load_test("rte", root=tmp_path)
    assert test.verification == "unverified" and test.full_size == 199
    assert sample_fewshot("rte", 13, root=tmp_path).verification == "unverified"
    # the fixed split still has a declared size (16 rows per class)
    assert sample_fewshot("rte", 13, source="fixed", root=tmp_path).verification == "row counts"


# --------------------------------------------------------------------------- rows that merge or carry garbage


def test_stray_quotes_that_merge_two_rows_are_refused_with_file_and_line(tmp_path):
    rel = TEST_FILES["snli"][0]
    _copy(tmp_path, [rel])
    path = tmp_path / rel
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    # ``,"The church has ...,1`` opens a quote that ``... with song.",0`` on the next line closes
    lines[1] = lines[1].replace(",The church has", ',"The church has')
    lines[2] = lines[2].replace("with song.,", 'with song.",')
    path.write_text("".join(lines), encoding="utf-8")
    _one_line_error(lambda: load_test("snli", root=tmp_path), f"{rel}:2:", "spans lines 2-3")


def test_a_nul_byte_in_a_text_field_is_refused_with_file_and_line(tmp_path):
    _copy(tmp_path, [SST2_DEV])
    path = tmp_path / SST2_DEV
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[4] = "a sentence with a \x00 byte\t1\n"
    path.write_text("".join(lines), encoding="utf-8")
    _one_line_error(lambda: load_test("sst2", root=tmp_path), f"{SST2_DEV}:5:", "control character '\\x00'")


def test_an_escaped_control_character_in_json_text_is_refused_naming_the_item(tmp_path):
    rel = "pool.json"
    items = {"0": {"text_a": "fine", "text_b": "fine", "label": "neutral"}}
    items["1"] = {"text_a": "a bell \u0007 rings", "text_b": "fine", "label": "entailment"}
    (tmp_path / rel).write_text(json.dumps(items), encoding="utf-8")
    _one_line_error(lambda: L.read_snli_json(tmp_path, rel), "pool.json:[1]", "control character")


def test_tabs_inside_quoted_text_and_c1_characters_are_kept():
    dbpedia = load_test("dbpedia").examples
    assert sum("\t" in e.texts[0] for e in dbpedia) == 2
    rte = load_test("rte").examples
    assert any("\x80" in t or "\x99" in t for e in rte for t in e.texts)
