from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gptclf.errors import DiskFullError, TrainingError
from gptclf.inference.cache_file import StateFile
from tests.fault_helpers import tmpfs


def test_rows_written_come_back_by_range_and_by_run_with_zeros_after_each_run(tmp_path: Path) -> None:
    store = StateFile(tmp_path / "s.f32", 10, 3)
    assert store.shape == (10, 3) and store.numel() == 30 and store.element_size() == 4
    assert torch.equal(store.read(0, 10), torch.zeros(10, 3))  # a new file reads as zeros
    values = torch.arange(30, dtype=torch.float32).view(10, 3) + 0.5
    store.write(0, values[:4])
    store.write(4, values[4:])
    assert torch.equal(store.read(2, 7), values[2:7])
    batch = store.read_runs([6, 0, 9], [3, 2, 1], 4)
    assert batch.shape == (3, 4, 3)
    assert torch.equal(batch[0, :3], values[6:9]) and not batch[0, 3:].any()
    assert torch.equal(batch[1, :2], values[0:2]) and not batch[1, 2:].any()
    assert torch.equal(batch[2, :1], values[9:10]) and not batch[2, 1:].any()
    assert torch.equal(store.read_runs([1], [5], 3)[0], values[1:4])  # a run longer than the width is cut
    store.close()
    assert (tmp_path / "s.f32").stat().st_size == 10 * 3 * 4


def test_a_file_cut_short_by_another_process_is_an_error_not_zeros(tmp_path: Path) -> None:
    store = StateFile(tmp_path / "s.f32", 8, 2)
    store.write(0, torch.ones(8, 2))
    os.truncate(tmp_path / "s.f32", 4 * 2 * 4)
    with pytest.raises(TrainingError, match=r"s\.f32 ended early \(another process cut it short\)"):
        store.read(2, 8)
    store.close()


def test_a_file_with_no_room_fails_when_it_is_made_not_halfway_through_a_build(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", "256k") as disk:
        with pytest.raises(DiskFullError, match="the frozen-trunk cache: no space left on the disk of"):
            StateFile(disk / "s.f32", 1024, 128)  # 512 KiB: the room is reserved up front
        assert not any(disk.iterdir()) or (disk / "s.f32").stat().st_size == 0


def _rss() -> int:
    """This process's resident memory now, in bytes (Linux)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_reading_every_row_of_a_large_file_does_not_grow_the_process(tmp_path: Path) -> None:
    """The point of the file: a memory map's pages count in the process once touched (it grew
    exactly as a cache in RAM); reads into a batch's buffer do not."""
    rows, width = 1 << 15, 1024  # 128 MiB
    store = StateFile(tmp_path / "s.f32", rows, width)
    chunk = torch.full((1024, width), 1.5)
    before = _rss()
    for start in range(0, rows, 1024):
        store.write(start, chunk)
    total = 0.0
    for start in range(0, rows, 256):  # as training does: a batch at a time
        total += float(store.read_runs([start], [256], 256).sum())
    grown = _rss() - before
    assert total == 1.5 * rows * width
    assert grown < 32 << 20, f"the process grew {grown / 2**20:.0f} MiB reading a 128 MiB file"
    store.close()
    mapped = np.memmap(tmp_path / "s.f32", dtype=np.float32, mode="r", shape=(rows, width))
    before = _rss()
    assert float(mapped.sum(dtype=np.float64)) == 1.5 * rows * width
    assert _rss() - before > 96 << 20  # the mapping's pages do count: what the file avoids (can fail)
    del mapped
