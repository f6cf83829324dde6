"""imagenet_ext.data on tiny files written here in every format, and the errors for bad files."""
import io
import json
import os
import pickle
import re
import zipfile

import numpy as np
import pytest
import torch

from imagenet_ext.data import load_dataset, load_digits, load_imagenet64_file, load_zip, to_float

R = 8                      # the ImageNet-64 format at 8x8: data [N, 3*8*8]


def _imagenet_arrays(n=5, seed=0, r=R):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3 * r * r), dtype=np.uint8), rng.integers(1, 1001, n)


def _png(arr):
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_digits():
    d = load_digits(16)
    assert d.images.shape == (1797, 3, 16, 16) and d.images.dtype == torch.uint8
    assert d.num_classes == 10 and set(d.labels.tolist()) == set(range(10))
    x = to_float(d.images[:10])
    assert x.min() >= -1 and x.max() <= 1 and x.max() > 0.5
    assert load_dataset("digits:1", 32).images.shape == (1797, 1, 32, 32)


def test_imagenet_pickle_npz_and_directory(tmp_path):
    data, labels = _imagenet_arrays()
    with open(tmp_path / "train_data_batch_1", "wb") as f:
        pickle.dump({"data": data, "labels": labels.tolist(), "mean": data.mean(0)}, f)
    np.savez(tmp_path / "train_data_batch_2.npz", data=data[:3], labels=labels[:3])
    np.savez(tmp_path / "val_data.npz", data=data[:2], labels=labels[:2])
    one = load_imagenet64_file(tmp_path / "train_data_batch_1", R)
    # planar layout: the first R*R bytes are the red plane
    assert torch.equal(one.images[0, 0].flatten(), torch.from_numpy(data[0, :R * R]))
    assert torch.equal(one.images[0, 2].flatten(), torch.from_numpy(data[0, 2 * R * R:]))
    assert torch.equal(one.labels, torch.from_numpy(labels - 1))            # 1-based -> 0-based
    train = load_dataset(str(tmp_path), R)
    assert len(train) == 8 and train.num_classes == 1000
    assert len(load_dataset(str(tmp_path), R, split="val")) == 2


def test_folder_and_zip(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (4, 12, 10, 3), dtype=np.uint8)          # non-square: center-cropped
    for k, cls in enumerate(["cat", "dog"]):
        (tmp_path / "folder" / cls).mkdir(parents=True)
        for i in range(2):
            (tmp_path / "folder" / cls / f"{i}.png").write_bytes(_png(imgs[2 * k + i]))
    ds = load_dataset(str(tmp_path / "folder"), 8)
    assert ds.images.shape == (4, 3, 8, 8) and ds.labels.tolist() == [0, 0, 1, 1] and ds.num_classes == 2
    z = tmp_path / "set.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for i in range(4):
            zf.writestr(f"img{i}.png", _png(imgs[i, :10]))
        zf.writestr("dataset.json", json.dumps({"labels": [[f"img{i}.png", i % 3] for i in range(4)]}))
    ds = load_dataset(str(z), 10)
    assert ds.images.shape == (4, 3, 10, 10) and ds.labels.tolist() == [0, 1, 2, 0] and ds.num_classes == 3
    assert torch.equal(ds.images[1], torch.from_numpy(imgs[1, :10]).permute(2, 0, 1))   # no resize: exact


def test_bad_files(tmp_path):
    data, labels = _imagenet_arrays()
    with pytest.raises(FileNotFoundError, match="nope"):
        load_dataset(str(tmp_path / "nope"), R)
    with pytest.raises(FileNotFoundError, match="train_data_batch_1"):
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "val_data").write_bytes(b"")
        load_dataset(str(tmp_path / "empty"), R, split="train")
    # truncated pickle and npz
    raw = pickle.dumps({"data": data, "labels": labels.tolist()})
    (tmp_path / "trunc").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_imagenet64_file(tmp_path / "trunc", R)
    np.savez(tmp_path / "full.npz", data=data, labels=labels)
    b = (tmp_path / "full.npz").read_bytes()
    (tmp_path / "trunc.npz").write_bytes(b[: len(b) // 2])
    with pytest.raises(ValueError, match="trunc.npz"):
        load_imagenet64_file(tmp_path / "trunc.npz", R)
    # wrong image size for the requested resolution
    with pytest.raises(ValueError, match=r"uint8 \[N, 768\]"):
        load_imagenet64_file(tmp_path / "full.npz", 16)
    # labels out of range (0 and 1001 with 1-based labels), and count mismatch
    for bad in (np.zeros(5, int), np.full(5, 1001)):
        np.savez(tmp_path / "bad.npz", data=data, labels=bad)
        with pytest.raises(ValueError, match=r"labels must be 1-based in \[1, 1000\]"):
            load_imagenet64_file(tmp_path / "bad.npz", R)
    np.savez(tmp_path / "short.npz", data=data, labels=labels[:3])
    with pytest.raises(ValueError, match="3 labels for 5 images"):
        load_imagenet64_file(tmp_path / "short.npz", R)
    np.savez(tmp_path / "keys.npz", x=data)
    with pytest.raises(ValueError, match="'data' and 'labels'"):
        load_imagenet64_file(tmp_path / "keys.npz", R)
    # zips: no dataset.json, a missing member, a negative label, not a zip at all
    for name, members in [("nojson.zip", {"a.png": _png(np.zeros((4, 4, 3), np.uint8))}),
                          ("missing.zip", {"dataset.json": json.dumps({"labels": [["a.png", 0]]})}),
                          ("neg.zip", {"a.png": _png(np.zeros((4, 4, 3), np.uint8)),
                                       "dataset.json": json.dumps({"labels": [["a.png", -2]]})})]:
        with zipfile.ZipFile(tmp_path / name, "w") as zf:
            for k, v in members.items():
                zf.writestr(k, v)
        with pytest.raises(ValueError, match=name):
            load_zip(tmp_path / name, 4)
    (tmp_path / "junk.zip").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(ValueError, match="corrupt or truncated zip"):
        load_zip(tmp_path / "junk.zip", 4)


def test_imagenet_memmap_cache(tmp_path):
    data, labels = _imagenet_arrays(n=6)
    np.savez(tmp_path / "train_data_batch_1.npz", data=data[:4], labels=labels[:4])
    with open(tmp_path / "train_data_batch_2", "wb") as f:
        pickle.dump({"data": data[4:], "labels": labels[4:].tolist()}, f)
    ref = load_dataset(str(tmp_path), R)
    cached = load_dataset(str(tmp_path), R, cache_dir=tmp_path / "cache")          # builds the .npy files
    again = load_dataset(str(tmp_path), R, cache_dir=tmp_path / "cache")           # memory-maps them
    for ds in (cached, again):
        assert torch.equal(ds.images, ref.images) and torch.equal(ds.labels, ref.labels)
    names = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(names) == 2 and all(re.fullmatch(r"imagenet64_train_8_[0-9a-f]{12}_[0-9a-f]{12}_(images|labels)\.npy",
                                                n) for n in names), names


def _write_batch(root, i, data, labels):
    root.mkdir(exist_ok=True)
    np.savez(root / f"train_data_batch_{i}.npz", data=data, labels=labels)


def test_memmap_cache_follows_its_inputs(tmp_path):
    """The cache is keyed by the files (names, sizes, mtimes) and the root: another root sharing the cache
    directory, a batch file added later or a file rewritten in place each give the new images, never the old."""
    cache, (data, labels) = tmp_path / "cache", _imagenet_arrays(n=9)
    a, b = tmp_path / "a", tmp_path / "b"
    _write_batch(a, 1, data[:3], labels[:3])
    _write_batch(b, 1, data[3:6], labels[3:6])
    for root, rows in ((a, slice(0, 3)), (b, slice(3, 6)), (a, slice(0, 3))):       # two roots, one cache dir
        got = load_dataset(str(root), R, cache_dir=cache)
        assert torch.equal(got.images.flatten(1), torch.from_numpy(data[rows]))
    _write_batch(a, 2, data[6:], labels[6:])                                          # a file added later
    got = load_dataset(str(a), R, cache_dir=cache)
    assert torch.equal(got.images.flatten(1), torch.from_numpy(np.concatenate([data[:3], data[6:]])))
    assert torch.equal(got.labels, torch.from_numpy(np.concatenate([labels[:3], labels[6:]]) - 1))
    os.utime(a / "train_data_batch_1.npz", ns=(1, 1))                                 # same size, other images
    _write_batch(a, 1, data[3:6], labels[3:6])
    got = load_dataset(str(a), R, cache_dir=cache)
    assert torch.equal(got.images.flatten(1)[:3], torch.from_numpy(data[3:6]))
    assert len(list(cache.iterdir())) == 4                       # one version per root: stale ones deleted


def test_16bit_png_and_integer_label_dtypes(tmp_path):
    from PIL import Image
    grey16 = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1040)                   # 0 .. 65520
    buf = io.BytesIO()
    Image.fromarray(grey16).save(buf, format="PNG")
    assert Image.open(io.BytesIO(buf.getvalue())).mode.startswith("I")                # really 16-bit
    with zipfile.ZipFile(tmp_path / "d.zip", "w") as z:
        z.writestr("a.png", buf.getvalue())
        z.writestr("dataset.json", json.dumps({"labels": [["a.png", 0]]}))
    img = load_zip(tmp_path / "d.zip", 8).images[0]
    assert torch.equal(img[0], torch.from_numpy(np.round(grey16 / 257).astype(np.uint8)))   # not 98% white
    assert torch.equal(img[0], img[2])
    data, labels = _imagenet_arrays(n=4)
    for dtype in (np.int32, np.uint16, np.int8):                                      # any integer dtype is fine
        np.savez(tmp_path / "x.npz", data=data, labels=np.array([1, 2, 3, 4], dtype=dtype))
        assert load_imagenet64_file(tmp_path / "x.npz", R).labels.tolist() == [0, 1, 2, 3]
