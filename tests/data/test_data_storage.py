"""Cache files: atomic writes and checksums that catch damage."""

import numpy as np
import pytest

from dann_dist.data.errors import DataError
from dann_dist.data.storage import arrays_sha256, atomic_write, load_cache, save_cache


def _arrays():
    rng = np.random.default_rng(0)
    return {"x_train": rng.integers(0, 256, (50, 28, 28, 1), dtype=np.uint8),
            "y_train": rng.integers(0, 10, 50)}


def test_cache_round_trip_keeps_arrays_and_metadata(tmp_path):
    path = tmp_path / "c.npz"
    checksum = save_cache(path, _arrays(), {"description": "x"})
    arrays, meta = load_cache(path, ("x_train", "y_train"))
    for name, array in _arrays().items():
        np.testing.assert_array_equal(arrays[name], array)
        assert arrays[name].dtype == array.dtype
    assert meta["description"] == "x" and meta["sha256"] == checksum


def test_flipped_byte_on_disk_is_detected(tmp_path):
    path = tmp_path / "c.npz"
    original = _arrays()
    save_cache(path, original, {})
    raw = bytearray(path.read_bytes())
    offset = raw.find(original["x_train"].tobytes()[:64])
    assert offset > 0
    raw[offset + 100] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=str(path)):
        load_cache(path, ("x_train", "y_train"))


def test_consistent_npz_with_stale_checksum_is_detected(tmp_path):
    """A valid zip whose arrays no longer match the stored sha256 (edited, mixed up)."""
    path = tmp_path / "c.npz"
    save_cache(path, _arrays(), {})
    with np.load(path) as archive:
        content = {name: archive[name] for name in archive.files}
    content["y_train"] = (content["y_train"] + 1) % 10
    np.savez(path, **content)
    with pytest.raises(DataError, match="checksum mismatch"):
        load_cache(path, ("x_train", "y_train"))


def test_truncated_cache_is_reported(tmp_path):
    path = tmp_path / "c.npz"
    save_cache(path, _arrays(), {})
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DataError, match="cannot read the cache"):
        load_cache(path, ("x_train", "y_train"))


def test_cache_missing_an_array_is_reported(tmp_path):
    path = tmp_path / "c.npz"
    save_cache(path, {"x_train": _arrays()["x_train"]}, {})
    with pytest.raises(DataError, match="lacks y_train"):
        load_cache(path, ("x_train", "y_train"))


def test_failed_write_keeps_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "c.bin"
    path.write_bytes(b"old content")

    def write_half_then_fail(f):
        f.write(b"half of the new")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(path, write_half_then_fail)
    assert path.read_bytes() == b"old content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.bin"]


def test_checksum_sees_dtype_and_shape_not_only_bytes():
    a = np.arange(8, dtype=np.uint8)
    assert arrays_sha256({"a": a}) != arrays_sha256({"a": a.reshape(2, 4)})
    assert arrays_sha256({"a": a}) != arrays_sha256({"a": a.view(np.int8)})
    assert arrays_sha256({"a": a}) == arrays_sha256({"a": a.copy()})


def test_write_error_becomes_a_data_error_and_cleans_up(tmp_path):
    path = tmp_path / "c.bin"

    def disk_full(f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(DataError, match="c.bin: cannot write \\(No space left on device\\)"):
        atomic_write(path, disk_full)
    assert list(tmp_path.iterdir()) == []
