"""Dataset download machinery and demo dataset resolution, against a local HTTP server (no network)."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import json
import struct
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

from transferkit.core.errors import DataError
from transferkit.data.sources import catalog, fashion_mnist, resolve
from transferkit.data.sources.download import DownloadError, download_file, extract_archive

PAYLOAD = bytes(range(256)) * 400  # 102,400 bytes: several reads, not one


class _Server:
    """A tiny HTTP server on 127.0.0.1 serving named byte strings, with a Range support we control."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.ignore_range = False
        self.cut_after: int | None = None  # close the connection after this many body bytes (once)
        self.requests: list[dict] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                body = server.files.get(self.path)
                rng = self.headers.get("Range")
                server.requests.append({"path": self.path, "range": rng})
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                if rng and not server.ignore_range:
                    start = int(rng.split("=", 1)[1].split("-", 1)[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                chunk = body[start:]
                self.send_header("Content-Length", str(len(chunk)))
                self.end_headers()
                if server.cut_after is not None:
                    n, server.cut_after = server.cut_after, None
                    self.wfile.write(chunk[:n])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(chunk)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


@pytest.fixture
def server():
    s = _Server()
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_download_verifies_checksum_and_renames_atomically(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    seen: list[tuple[int, int | None]] = []
    dest = download_file(server.url("/f.bin"), tmp_path / "f.bin", checksum=_sha(PAYLOAD), progress=lambda d, t: seen.append((d, t)))
    assert dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "f.bin.part").exists()
    assert seen[-1] == (len(PAYLOAD), len(PAYLOAD))
    # Cached: a second call makes no request at all.
    n = len(server.requests)
    download_file(server.url("/f.bin"), tmp_path / "f.bin", checksum=_sha(PAYLOAD))
    assert len(server.requests) == n


def test_md5_checksums_are_accepted(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    dest = download_file(server.url("/f.bin"), tmp_path / "f.bin", checksum="md5:" + hashlib.md5(PAYLOAD).hexdigest())
    assert dest.read_bytes() == PAYLOAD


def test_checksum_mismatch_is_refused_and_nothing_is_left(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download_file(server.url("/f.bin"), tmp_path / "f.bin", checksum=_sha(b"something else"))
    assert not (tmp_path / "f.bin").exists()
    assert not (tmp_path / "f.bin.part").exists()


def test_resume_after_partial_file_uses_range(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD[:30000])
    dest = download_file(server.url("/f.bin"), tmp_path / "f.bin", checksum=_sha(PAYLOAD))
    assert dest.read_bytes() == PAYLOAD
    assert server.requests[-1]["range"] == "bytes=30000-"


def test_interrupted_transfer_resumes_automatically(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    server.cut_after = 40000
    dest = download_file(server.url("/f.bin"), tmp_path / "f.bin", checksum=_sha(PAYLOAD), retries=1, backoff_s=0.0)
    assert dest.read_bytes() == PAYLOAD
    ranges = [r["range"] for r in server.requests]
    assert ranges[0] is None and ranges[1] == "bytes=40000-"


def test_interruption_without_retries_keeps_the_part_file_for_a_rerun(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    server.cut_after = 40000
    with pytest.raises(DownloadError, match="rerun the same command to resume"):
        download_file(server.url("/f.bin"), tmp_path / "f.bin", checksum=_sha(PAYLOAD), retries=0)
    assert not (tmp_path / "f.bin").exists()
    assert (tmp_path / "f.bin.part").stat().st_size == 40000
    download_file(server.url("/f.bin"), tmp_path / "f.bin", checksum=_sha(PAYLOAD), retries=0)
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    server.ignore_range = True
    (tmp_path / "f.bin.part").write_bytes(b"x" * 1000)  # junk that must not stay in front
    dest = download_file(server.url("/f.bin"), tmp_path / "f.bin", checksum=_sha(PAYLOAD))
    assert dest.read_bytes() == PAYLOAD


def test_complete_part_file_answered_416_is_verified_not_refetched(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD)
    dest = download_file(server.url("/f.bin"), tmp_path / "f.bin", checksum=_sha(PAYLOAD))
    assert dest.read_bytes() == PAYLOAD


def test_http_404_is_one_clear_error(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_file(server.url("/missing"), tmp_path / "m.bin")


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_extract_archive_refuses_members_outside_the_target(tmp_path):
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(_tar_gz({"../evil.txt": b"x"}))
    with pytest.raises(DownloadError):
        extract_archive(bad, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()
    assert not (tmp_path / "out").exists()


def test_extract_truncated_zip_is_a_download_error(tmp_path):
    bad = tmp_path / "cut.zip"
    bad.write_bytes(b"PK\x03\x04 truncated download")
    with pytest.raises(DownloadError, match="could not be unpacked"):
        extract_archive(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _png_bytes(color: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (color, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


def test_download_dataset_fetches_unpacks_and_marks_oxford_layout(server, tmp_path, monkeypatch):
    images = _tar_gz({"images/Abyssinian_1.jpg": _png_bytes(10), "images/beagle_1.jpg": _png_bytes(200)})
    annotations = _tar_gz({"annotations/list.txt": b"Abyssinian_1 1 1 1\nbeagle_1 2 2 1\n",
                           "annotations/trainval.txt": b"Abyssinian_1 1 1 1\n", "annotations/test.txt": b"beagle_1 2 2 1\n"})
    server.files["/images.tar.gz"] = images
    server.files["/annotations.tar.gz"] = annotations
    fake = catalog.DatasetInfo(
        name="fake-pets", title="Fake pets", description="", license="test", homepage="", folder="fake-pets",
        approx_download="", classes="2",
        files=(catalog.RemoteFile(server.url("/images.tar.gz"), "img.tar.gz", _sha(images), unpack="images"),
               catalog.RemoteFile(server.url("/annotations.tar.gz"), "ann.tar.gz", _sha(annotations), unpack="annotations")),
    )
    monkeypatch.setitem(catalog.DATASETS._items, "fake-pets", fake)
    assert catalog.prepared_path("fake-pets", cache=tmp_path) is None
    folder = catalog.download_dataset("fake-pets", cache=tmp_path)
    assert (folder / "images" / "beagle_1.jpg").is_file()
    assert (folder / "annotations" / "list.txt").is_file()
    assert catalog.prepared_path("fake-pets", cache=tmp_path) == folder
    from transferkit.data import load_images

    assert load_images(folder).report.format == "oxford-pets"


# ----------------------------------------------------------------------------------- Fashion-MNIST


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fake_fashion(tmp_path) -> Path:
    """Four IDX files in the Debian package's layout: 10 classes, 6 train and 3 test images each."""
    src = tmp_path / "fm-src"
    src.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 60), ("t10k", 30)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 256, size=(n, 28, 28))
        (src / f"{split}-images-idx3-ubyte.gz").write_bytes(_idx(images))
        (src / f"{split}-labels-idx1-ubyte.gz").write_bytes(_idx(labels))
    return src


def test_read_idx_rejects_a_non_idx_file(tmp_path):
    bad = tmp_path / "x.gz"
    bad.write_bytes(gzip.compress(b"not an idx file"))
    with pytest.raises(DataError, match="IDX"):
        fashion_mnist.read_idx(bad)


def test_fashion_subset_is_stratified_deterministic_and_loadable(fake_fashion, tmp_path):
    a = fashion_mnist.prepare_fashion_mnist(fake_fashion, tmp_path / "a", train_per_class=4, test_per_class=2)
    b = fashion_mnist.prepare_fashion_mnist(fake_fashion, tmp_path / "b", train_per_class=4, test_per_class=2)
    files_a = sorted(p.relative_to(a).as_posix() for p in a.rglob("*.png"))
    files_b = sorted(p.relative_to(b).as_posix() for p in b.rglob("*.png"))
    assert files_a == files_b and len(files_a) == 10 * (4 + 2)
    for name in fashion_mnist.CLASS_NAMES:
        assert len(list((a / "train" / name).glob("*.png"))) == 4
    marker = json.loads((a / fashion_mnist.MARKER).read_text())
    assert marker["counts"] == {"train": 40, "test": 20}
    from transferkit.data import load_images

    imageset = load_images(a)
    assert imageset.num_classes == 10 and len(imageset) == 60
    assert imageset.split is not None and imageset.split.count("test") == 20


# ------------------------------------------------------------------------------ resolution order


@pytest.fixture
def no_debian(monkeypatch):
    monkeypatch.setattr(fashion_mnist, "debian_source", lambda: None)


def test_explicit_data_wins_and_missing_data_is_a_clear_error(tmp_path):
    def never(host):  # a folder given on the command line must not even look at the network
        raise AssertionError("reachability checked")

    r = resolve.resolve_dataset(data=tmp_path, reachable=never, cache=tmp_path / "c")
    assert r.name == "folder" and r.path == tmp_path and "--data" in r.reason
    with pytest.raises(DataError, match="does not exist"):
        resolve.resolve_dataset(data=tmp_path / "nope", reachable=never)


def test_offline_falls_back_to_debian_fashion_mnist(fake_fashion, tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "debian_source", lambda: fake_fashion)
    r = resolve.resolve_dataset(cache=tmp_path / "c", reachable=lambda host: "cannot resolve it", fashion_sizes=(3, 1))
    assert r.name == "fashion-mnist"
    assert "cannot resolve it" in r.reason and "dataset-fashion-mnist" in r.reason
    assert len(list(r.path.rglob("*.png"))) == 40


def test_reachable_site_downloads_oxford_pets(tmp_path, monkeypatch):
    calls = []

    def fake_download(name, **kwargs):
        calls.append(name)
        return tmp_path / "pets"

    monkeypatch.setattr(resolve, "download_dataset", fake_download)
    r = resolve.resolve_dataset(cache=tmp_path / "c", reachable=lambda host: None)
    assert calls == ["oxford-pets"] and r.name == "oxford-pets" and "downloaded" in r.reason


def test_cached_oxford_pets_is_used_without_looking_at_the_network(tmp_path):
    folder = tmp_path / "c" / "datasets" / "oxford-pets"
    folder.mkdir(parents=True)
    (folder / catalog.MARKER).write_text(json.dumps({"complete": True}))

    def never(host):
        raise AssertionError("reachability checked")

    r = resolve.resolve_dataset(cache=tmp_path / "c", reachable=never)
    assert r.name == "oxford-pets" and r.path == folder and "cache" in r.reason


def test_nothing_available_says_what_to_do(tmp_path, no_debian):
    with pytest.raises(DataError) as info:
        resolve.resolve_dataset(cache=tmp_path / "c", reachable=lambda host: "no DNS")
    text = str(info.value)
    assert "apt-get install -y dataset-fashion-mnist" in text and "--data" in text


def test_named_dataset_offline_and_uncached_is_refused(tmp_path, no_debian):
    with pytest.raises(DataError, match="cannot be reached"):
        resolve.resolve_dataset(dataset="petimages", cache=tmp_path / "c", reachable=lambda host: "no DNS")


def test_unknown_dataset_name_suggests_close_match(tmp_path):
    from transferkit.core.errors import UnknownNameError

    with pytest.raises(UnknownNameError, match="oxford-pets"):
        resolve.resolve_dataset(dataset="oxford-pet", cache=tmp_path / "c", reachable=lambda host: None)


def test_offline_env_answers_without_a_lookup(monkeypatch):
    monkeypatch.setenv("TRANSFERKIT_OFFLINE", "1")
    assert "offline" in resolve.unreachable_reason("example.invalid")


# ------------------------------------------------------------------------------------------- CLI


def test_cli_download_fashion_from_debian_then_path_and_list(fake_fashion, monkeypatch, capsys):
    from transferkit.cli.main import main

    monkeypatch.setattr(fashion_mnist, "debian_source", lambda: fake_fashion)
    assert main(["datasets", "path", "fashion-mnist"]) == 1
    assert "datasets download fashion-mnist" in capsys.readouterr().err
    assert main(["datasets", "download", "fashion-mnist"]) == 0
    assert "ready in" in capsys.readouterr().out
    assert main(["datasets", "path", "fashion-mnist"]) == 0
    where = Path(capsys.readouterr().out.strip().replace("\n", ""))
    assert (where / "train" / "Trouser").is_dir()
    assert main(["datasets", "list", "--format", "json"]) == 0
    listed = {d["name"]: d for d in json.loads(capsys.readouterr().out)}
    assert set(listed) == {"oxford-pets", "petimages", "fashion-mnist"} and listed["fashion-mnist"]["cached"]


def test_cli_download_offline_is_one_clear_line(monkeypatch, capsys):
    from transferkit.cli.main import main

    monkeypatch.setenv("TRANSFERKIT_OFFLINE", "1")
    assert main(["datasets", "download", "oxford-pets"]) == 1
    err = capsys.readouterr().err
    assert "cannot download oxford-pets" in err and "offline" in err
