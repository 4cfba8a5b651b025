"""Writing a bundle directory without PyTorch: the file layout, hashes and the atomic swap.

:func:`transferkit.classifier.bundle.save_bundle` writes through :func:`write_bundle_dir`, and so does a
warm ``train`` rerun that never built the network (it has the head's weights as numpy arrays):
importing PyTorch costs more than the rest of such a rerun. safetensors writes the same bytes
from numpy arrays as from the equal torch tensors, so both routes give identical files.

The whole bundle, with anything written beside the weights (the report, through ``extras``), is
built in a temporary folder and put in place with one rename. ``bundle.json`` keeps a manifest of
every file written there; a folder written into a bundle later (``transferkit evaluate`` writes
``<bundle>/evaluation/``) keeps its own (:data:`FOLDER_MANIFEST`). A bundle folder is replaced only
when every file inside it, subfolders included, is one of those.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transferkit import __version__
from transferkit.backbones.weights import sha256_of_bytes
from transferkit.core.atomic import atomic_write_text, replace_directory
from transferkit.core.errors import BundleError, TransferkitError
from transferkit.core.paths import describe_os_error

log = logging.getLogger(__name__)

BUNDLE_FORMAT = "transferkit-bundle"
BUNDLE_FORMAT_VERSION = 1
"""The format of a bundle of one backbone (what every release so far reads)."""
MULTI_BUNDLE_FORMAT_VERSION = 2
"""The format of a bundle of several backbones (member bundles inside it): older releases refuse it by its version."""
MULTI_BACKBONE_KIND = "multi-backbone"
BUNDLE_JSON = "bundle.json"
HEAD_FILE = "head.safetensors"
BACKBONE_FILE = "backbone.safetensors"
FOLDER_MANIFEST = ".transferkit-manifest.json"
"""The manifest a report writer leaves in its folder: the files it wrote there."""
FOLDER_MANIFEST_FORMAT = "transferkit-folder-manifest"
# What the previous release wrote into a bundle's report/ and evaluation/ folders (it kept no
# manifest): such files are transferkit's own, anything else there is the user's.
GENERATED_ENTRIES = ("report/", "evaluation/")
REPORT_FILE_NAMES = ("report.html", "metrics.json", "confusion_matrix.png", "calibration.png", "curves.png")
REPORT_FILE_PREFIXES = ("mistakes",)


class BundlePath(type(Path())):
    """The path of a bundle just written (a :class:`~pathlib.Path`).

    Attributes:
        extras_error: why the ``extras`` step (the report) failed, naming the file and the cause;
            the bundle itself was written and kept without them. ``None`` when it worked or when
            there were none.
    """

    extras_error: str | None = None


# Bundle integrity checks hash the bytes every time (never the memoised weights hash).
sha256_file = sha256_of_bytes


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def json_safe(obj: Any) -> Any:
    """Make configs and metrics JSON-able (dataclasses, paths, numpy scalars and arrays)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return json_safe(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy / torch scalars and arrays
        return obj.tolist()
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def save_numpy_weights(arrays: dict) -> Callable[[str], None]:
    """A writer for :func:`write_bundle_dir` that stores numpy arrays as safetensors."""

    def write(path: str) -> None:
        from safetensors.numpy import save_file

        save_file(arrays, path)

    return write


def _cause(exc: BaseException) -> str:
    """What went wrong, in words (no exception class names): ``no space left on device``, ..."""
    if isinstance(exc, OSError):
        return describe_os_error(exc)
    text = str(exc)
    if "No space left on device" in text or "StorageFull" in text or "code: 28," in text:
        return "no space left on device"
    if "Permission denied" in text or "PermissionDenied" in text:
        return "permission denied"
    if isinstance(exc, TransferkitError):
        return text
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first[:200] or "the write failed"


def _failure(exc: BaseException, target: Path, tmp: Path | None = None, final: Path | None = None) -> str:
    """``"<cause> writing <file>"``, naming the file where it will be, not where it was being built."""
    if isinstance(exc, TransferkitError):  # already one line naming the file, perhaps in the temp folder
        text = str(exc)
        return text.replace(str(tmp), str(final)) if tmp is not None and final is not None else text
    name = target
    filename = getattr(exc, "filename", None)
    if filename and tmp is not None and final is not None:
        try:
            name = final / Path(os.fspath(filename)).relative_to(tmp)
        except ValueError:
            name = Path(os.fspath(filename))
    return f"{_cause(exc)} writing {name}"


def _write_step(what: Path, step: Callable[[], Any]) -> Any:
    """Run one write of a bundle; any failure becomes a one-line :class:`BundleError` naming ``what``."""
    try:
        return step()
    except BundleError:
        raise
    except Exception as exc:  # noqa: BLE001 - OSError, SafetensorError, ...: the cause and the path, never the raw error
        raise BundleError(f"{_failure(exc, what)}; free some space or choose another --out") from None


def _files_under(folder: Path) -> dict[str, int]:
    """Relative POSIX path -> size of every file under ``folder``."""
    out: dict[str, int] = {}
    for dirpath, _dirnames, filenames in os.walk(folder):
        for name in filenames:
            p = Path(dirpath) / name
            out[p.relative_to(folder).as_posix()] = p.lstat().st_size
    return out


def _make_shareable(folder: Path) -> None:
    """Ordinary permissions (the umask's) for everything under ``folder``; mkstemp/mkdtemp make things private."""
    mask = umask()
    for dirpath, dirnames, filenames in os.walk(folder):
        for d in dirnames:
            os.chmod(Path(dirpath) / d, 0o777 & ~mask)
        for f in filenames:
            os.chmod(Path(dirpath) / f, 0o666 & ~mask)


def write_bundle_dir(
    path: str | os.PathLike,
    *,
    spec,
    head_cfg: dict[str, Any],
    weights: dict[str, Callable[[str], None]],
    class_names: list[str],
    include_backbone: bool,
    metrics: dict[str, Any] | None = None,
    config: Any = None,
    extra: dict[str, Any] | None = None,
    extras: Callable[[Path], Any] | None = None,
) -> BundlePath:
    """Write a bundle directory of one backbone at ``path`` atomically (see :func:`transferkit.classifier.bundle.save_bundle`).

    Args:
        spec: the backbone's :class:`~transferkit.backbones.spec.BackboneSpec`.
        head_cfg: the head's architecture (:func:`transferkit.classifier.bundle.head_config`).
        weights: file name -> ``write(path)`` for each weights file (``head.safetensors``, and
            ``backbone.safetensors`` when ``include_backbone``).
        extras: ``extras(tmp_dir)`` writes more files into the bundle being built (e.g. the report
            into ``tmp_dir / "report"``) before it replaces the old one, so the new bundle and its
            report appear together in one rename. If it raises, whatever it wrote is removed, the
            bundle is still put in place, a warning is logged, and the returned path's
            ``extras_error`` says what failed.

    Returns:
        ``path`` as a :class:`BundlePath`.

    Raises:
        BundleError: ``path`` is a file, or a folder holding files transferkit did not write; a
            file of the bundle cannot be written (the message names it and the cause, e.g. "no
            space left on device writing m/head.safetensors").
    """
    model = {"backbone": spec.to_dict(), "include_backbone": bool(include_backbone), "head": head_cfg}
    return write_bundle(path, model=model, weights=weights, class_names=class_names, metrics=metrics, config=config, extra=extra,
                        extras=extras, what=f"backbone {spec.name}")


def write_bundle(
    path: str | os.PathLike,
    *,
    model: dict[str, Any] | Callable[[Path], dict[str, Any]],
    weights: dict[str, Callable[[str], None]],
    class_names: list[str],
    format_version: int = BUNDLE_FORMAT_VERSION,
    metrics: dict[str, Any] | None = None,
    config: Any = None,
    extra: dict[str, Any] | None = None,
    extras: Callable[[Path], Any] | None = None,
    what: str = "",
) -> BundlePath:
    """Write any bundle directory atomically: what :func:`write_bundle_dir` does, for any model.

    Args:
        model: the fields of ``bundle.json`` that describe the model, or ``model(tmp_dir)`` that
            writes the model's own files into the bundle being built (a model of several backbones
            writes one bundle per member) and returns those fields; the files it writes are hashed
            when it names them in ``"files"`` of its fields.
        format_version: the bundle format this model needs (a reader older than it refuses it).
        what: how the log line names the model.
        The other arguments: as :func:`write_bundle_dir`.
    """
    path = Path(path)
    check_bundle_target(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    except OSError as exc:  # read-only place, a file where a folder should be, a full disk ...
        raise BundleError(f"cannot write a bundle to {path} ({describe_os_error(exc)}); choose a writable --out") from None
    extras_error: str | None = None
    try:
        os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes it private; a bundle is meant to be shared
        files: dict[str, str] = {}
        for name, write in weights.items():
            file = tmp / name
            _write_step(path / name, lambda write=write, file=file: write(str(file)))
            files[name] = _write_step(path / name, lambda file=file: sha256_file(file))
        model_meta = dict(model(tmp) if callable(model) else model)
        files.update(model_meta.pop("files", {}))
        if extras is not None:
            own = set(weights) | {name.split("/")[0] for name in files}
            try:
                extras(tmp)
            except Exception as exc:  # noqa: BLE001 - only the extras failed: the bundle goes on without them
                extras_error = _failure(exc, path, tmp, path)
                for entry in list(tmp.iterdir()):  # no half report: only the weights stay
                    if entry.name in own:
                        continue
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink(missing_ok=True)
        manifest = _write_step(path, lambda: _files_under(tmp))
        meta = {
            "format": BUNDLE_FORMAT,
            "format_version": int(format_version),
            "toolkit_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "class_names": list(class_names),
            **model_meta,
            "files": files,
            "metrics": json_safe(metrics or {}),
            "config": json_safe(config) if config is not None else None,
            "extra": json_safe(extra or {}),
            # Every file written into the bundle besides bundle.json (relative path -> bytes): what
            # may be replaced with it. Anything else found inside is the user's and is never deleted.
            "manifest": manifest,
        }

        def write_meta() -> None:
            with open(tmp / BUNDLE_JSON, "w") as f:
                json.dump(meta, f, indent=2, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())

        _write_step(path / BUNDLE_JSON, write_meta)
        _make_shareable(tmp)
        try:
            check_bundle_target(path)  # again: something may have been put there while the model trained
        except BundleError as exc:
            kept = path.with_name(f"{path.name}.new-{time.strftime('%Y%m%d-%H%M%S')}")
            os.replace(tmp, kept)  # the finished model is not thrown away
            raise BundleError(f"{exc} (the new bundle was kept at {kept})") from None
        generated = _extra_entries(path)
        try:
            replace_directory(tmp, path)  # the previous bundle is put back if the swap fails
        except OSError as exc:
            raise BundleError(f"cannot put the new bundle in place at {path} ({describe_os_error(exc)}); "
                              "the previous one is unchanged") from None
        if generated:
            log.info("replaced the bundle %s and the old model's %s", path, ", ".join(generated))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("saved bundle %s (%d classes, %s)", path, len(class_names), what or "model")
    if extras_error:
        log.warning("the bundle %s was saved and kept, but its report was not written (%s)", path, extras_error)
    result = BundlePath(path)
    result.extras_error = extras_error
    return result


# ------------------------------------------------------------------------------------------------
# Manifests: what transferkit wrote, so nothing else is ever deleted with a bundle


def write_folder_manifest(folder: str | os.PathLike, names: list[str] | tuple[str, ...]) -> Path:
    """Record in ``folder``'s :data:`FOLDER_MANIFEST` that transferkit wrote ``names`` there.

    Entries of an earlier manifest whose files still exist are kept (they were transferkit's too).
    Returns the manifest's path.
    """
    folder = Path(folder)
    entries = {n: None for n in read_folder_manifest(folder) if (folder / n).is_file()}
    for name in names:
        file = folder / name
        entries[name] = file.stat().st_size if file.is_file() else None
    doc = {"format": FOLDER_MANIFEST_FORMAT, "toolkit_version": __version__, "files": dict(sorted(entries.items()))}
    return atomic_write_text(folder / FOLDER_MANIFEST, json.dumps(doc, indent=1, sort_keys=True))


def read_folder_manifest(folder: str | os.PathLike) -> set[str]:
    """The file names ``folder``'s manifest says transferkit wrote (empty when there is none or it is unreadable)."""
    try:
        doc = json.loads((Path(folder) / FOLDER_MANIFEST).read_text())
    except (OSError, ValueError):
        return set()
    files = doc.get("files") if isinstance(doc, dict) and doc.get("format") == FOLDER_MANIFEST_FORMAT else None
    return {n for n in files if isinstance(n, str) and "/" not in n} if isinstance(files, dict) else set()


def _is_known_report_file(rel: str) -> bool:
    folder, _, name = rel.rpartition("/")
    return f"{folder}/" in GENERATED_ENTRIES and (name in REPORT_FILE_NAMES or name.startswith(REPORT_FILE_PREFIXES))


def foreign_files(path: str | os.PathLike) -> list[str]:
    """Files (and links, and empty folders) under the bundle folder ``path`` that transferkit did not write.

    transferkit's own: ``bundle.json``, the weights files it records, the files in its manifest,
    files listed in a :data:`FOLDER_MANIFEST` beside them (with that manifest), and, for bundles
    of the previous release (no manifest), the report files it wrote into ``report/`` and
    ``evaluation/``. Relative POSIX paths, sorted.
    """
    path = Path(path)
    try:
        meta = json.loads((path / BUNDLE_JSON).read_text())
    except (OSError, ValueError):
        meta = {}
    meta = meta if isinstance(meta, dict) else {}
    own = {BUNDLE_JSON}
    for key in ("files", "manifest"):
        if isinstance(meta.get(key), dict):
            own |= {k for k in meta[key] if isinstance(k, str)}
    foreign: list[str] = []
    for dirpath, dirnames, filenames in os.walk(path):
        here = Path(dirpath)
        rel_dir = here.relative_to(path).as_posix()
        prefix = "" if rel_dir == "." else rel_dir + "/"
        listed = read_folder_manifest(here)
        if listed:
            listed.add(FOLDER_MANIFEST)
        for d in list(dirnames):
            if (here / d).is_symlink():  # never followed, and not something transferkit makes
                foreign.append(prefix + d)
                dirnames.remove(d)
        if prefix and not filenames and not dirnames and f"{prefix}" not in GENERATED_ENTRIES:
            foreign.append(prefix)  # an empty folder transferkit did not make
        for name in filenames:
            rel = prefix + name
            if rel in own or name in listed or _is_known_report_file(rel):
                continue
            foreign.append(rel)
    return sorted(foreign)


def check_bundle_target(path: str | Path) -> None:
    """Raise :class:`BundleError` now if a bundle cannot replace what is at ``path``.

    Callers run it before long work (training), so a bad ``--out`` fails in a second, not after the
    run. Allowed: nothing there, an empty folder, or an earlier bundle holding nothing, subfolders
    included, but what transferkit wrote (see :func:`foreign_files`).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise BundleError(f"cannot write a bundle to {path}: it is a file; choose a directory path")
    if not path.is_dir() or not any(path.iterdir()):
        return
    if not (path / BUNDLE_JSON).is_file():
        raise BundleError(f"{path} is a non-empty directory that is not a bundle; choose another --out")
    others = foreign_files(path)
    if others:
        more = f" and {len(others) - 5} more" if len(others) > 5 else ""
        raise BundleError(f"{path} is a bundle that also holds files transferkit did not write ({', '.join(others[:5])}{more}); "
                          "replacing it would delete them: move them out or choose another --out")


def _extra_entries(path: Path) -> list[str]:
    """Names inside an existing bundle folder that are not bundle files (e.g. an ``evaluation/`` report)."""
    meta_file = path / BUNDLE_JSON
    if not meta_file.is_file():
        return []
    try:
        known = {name.split("/")[0] for name in json.loads(meta_file.read_text()).get("files", {})} | {BUNDLE_JSON}
    except (OSError, ValueError, AttributeError):
        known = {BUNDLE_JSON}
    return sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir() if p.name not in known)


__all__ = ["BUNDLE_FORMAT", "BUNDLE_FORMAT_VERSION", "FOLDER_MANIFEST", "MULTI_BACKBONE_KIND", "MULTI_BUNDLE_FORMAT_VERSION",
           "BundlePath", "check_bundle_target", "foreign_files", "json_safe", "read_folder_manifest", "save_numpy_weights", "sha256_file",
           "write_bundle", "write_bundle_dir", "write_folder_manifest"]
