"""The pods' images, built without a registry or a container engine.

Each image is one layer made from a folder: a debootstrap of Debian bookworm (minbase plus
what the pods need), into which reflow and its dependencies are installed offline from
wheels built on the host with ``pip wheel`` (pip inside the chroot cannot reach the
package index). The folder is packed as a ``docker save`` archive that
``ctr images import`` reads. Nothing is ever pulled.

- ``reflow-k8s-python``: python3 and reflow[kubernetes,postgres] in ``/opt/venv``.
- ``reflow-k8s-spark``: also a headless JRE 17 and PySpark, with the deploy image's
  entrypoint (``deploy/kubernetes/entrypoint.sh``), so executor pods started with
  ``args: ["executor"]`` and no command work.
- ``reflow-k8s-pause``: the pause program alone, the pods' sandbox.

Both reflow images mirror ``deploy/kubernetes/Dockerfile``: user 10001 (``reflow``),
home and working directory ``/opt/reflow``, ``/opt/venv/bin`` first on PATH.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

from binaries import BIN, ROOT
from layout import (
    CACHE,
    LOGS,
    PAUSE_IMAGE,
    PYTHON_IMAGE,
    REPO,
    SPARK_IMAGE,
    ClusterError,
    Timings,
    run,
    stamp,
    stamp_content,
)

IMAGES = CACHE / "images"
ROOTFS = CACHE / "rootfs"
WHEELS = CACHE / "wheels"
ENTRYPOINT = REPO / "deploy" / "kubernetes" / "entrypoint.sh"

PYTHON_PACKAGES = ["python3", "python3-venv", "tini", "procps"]
SPARK_PACKAGES = [*PYTHON_PACKAGES, "openjdk-17-jre-headless"]
JAVA_HOME = "/usr/lib/jvm/java-17-openjdk-amd64"
PATH = "/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BASE_ENV = {
    "PATH": PATH,
    "VIRTUAL_ENV": "/opt/venv",
    "PYTHONUNBUFFERED": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
    "REFLOW_HOME": "/opt/reflow",
    "PYSPARK_PYTHON": "python3",
}


def archive(image: str) -> Path:
    return IMAGES / (image.replace(":", "_") + ".tar")


def build_all(t: Timings) -> list[str]:
    """The three image archives; a reflow image is rebuilt only when reflow's source changed.

    Returns the names of the images (re)built by this call.
    """
    key = source_key()
    IMAGES.mkdir(parents=True, exist_ok=True)
    for kind, packages in (("python", PYTHON_PACKAGES), ("spark", SPARK_PACKAGES)):
        rootfs(t, kind, packages)
    if stamp_content("wheels") != key:
        wheels(t, key)
    else:
        t.skipped("wheels (pip wheel on the host)", "reflow unchanged")
    built = [
        image
        for image, made in [
            (
                PYTHON_IMAGE,
                reflow_image(t, PYTHON_IMAGE, "python", "reflow[kubernetes,postgres]", key),
            ),
            (
                SPARK_IMAGE,
                reflow_image(t, SPARK_IMAGE, "spark", "reflow[spark,kubernetes,postgres]", key),
            ),
            (PAUSE_IMAGE, pause_image(t)),
        ]
        if made
    ]
    return built


def source_key() -> str:
    """A digest of what goes into the reflow images from the repository."""
    digest = hashlib.sha256()
    files = [REPO / "pyproject.toml", REPO / "README.md", ENTRYPOINT]
    files += sorted(
        p for p in (REPO / "src").rglob("*") if p.is_file() and "__pycache__" not in p.parts
    )
    for path in files:
        if path.exists():
            digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    digest.update(json.dumps([PYTHON_PACKAGES, SPARK_PACKAGES, BASE_ENV]).encode())
    return digest.hexdigest()[:16]


def debootstrap_env() -> dict[str, str]:
    # debootstrap runs from its unpacked package; it finds its scripts through this.
    return {"DEBOOTSTRAP_DIR": str(ROOT / "usr" / "share" / "debootstrap")}


def unmount_under(path: Path) -> None:
    """Unmount whatever an interrupted debootstrap or chroot left mounted under ``path``."""
    prefix = str(path.resolve()) + "/"
    mounts = [
        line.split()[4]
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if line.split()[4].startswith(prefix)
    ]
    for mount in sorted(mounts, key=len, reverse=True):
        run(["umount", "-l", mount], quiet=True)


def rootfs(t: Timings, kind: str, packages: list[str]) -> None:
    """A debootstrap of bookworm minbase with ``packages``, cached as ``<cache>/rootfs/<kind>``."""
    name = f"rootfs {kind} (debootstrap bookworm minbase)"
    want = " ".join(packages)
    target = ROOTFS / kind
    if stamp_content(f"rootfs-{kind}") == want and target.exists():
        return t.skipped(name)
    with t.step(name):
        if target.exists():
            unmount_under(target)
            shutil.rmtree(target)
        target.mkdir(parents=True)
        (ROOTFS / "debs").mkdir(exist_ok=True)
        run(
            [ROOT / "usr" / "sbin" / "debootstrap", "--variant=minbase",
             "--include=" + ",".join(packages), f"--cache-dir={ROOTFS / 'debs'}",
             "bookworm", target],
            env=debootstrap_env(), log=LOGS / f"rootfs-{kind}.log",
        )  # fmt: skip
        unmount_under(target)
        for leftover in ("var/lib/apt/lists", "var/cache/apt/archives"):
            for p in (target / leftover).glob("*"):
                if p.is_file():
                    p.unlink()
        stamp(f"rootfs-{kind}", want)


def wheels(t: Timings, key: str) -> None:
    """Wheels of reflow (this checkout) and of everything it needs, built on the host."""
    with t.step("wheels (pip wheel on the host)"):
        WHEELS.mkdir(parents=True, exist_ok=True)
        for old in WHEELS.glob("reflow-*.whl"):
            old.unlink()
        # Built from a copy, so the build leaves nothing in the checkout.
        project = CACHE / "reflow-source"
        shutil.rmtree(project, ignore_errors=True)
        shutil.copytree(
            REPO / "src",
            project / "src",
            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
        )
        for name in ("pyproject.toml", "README.md"):
            shutil.copy(REPO / name, project / name)
        run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", WHEELS,
             "--find-links", WHEELS, f"{project}[spark,kubernetes,postgres]"],
            log=LOGS / "wheels.log",
        )  # fmt: skip
        shutil.rmtree(project)
        stamp("wheels", key)


def reflow_image(t: Timings, image: str, kind: str, requirement: str, key: str) -> bool:
    name = f"image {image}"
    if stamp_content(f"image-{kind}") == key and archive(image).exists():
        t.skipped(name, "reflow unchanged")
        return False
    with t.step(name):
        work = IMAGES / f"{kind}.rootfs"
        if work.exists():
            unmount_under(work)
            shutil.rmtree(work)
        run(["cp", "-a", ROOTFS / kind, work])
        log = LOGS / f"image-{kind}.log"
        shutil.copytree(WHEELS, work / "tmp" / "wheels")

        def chroot(*args: str) -> None:
            env = {
                "PATH": PATH,
                "HOME": "/root",
                "LC_ALL": "C.UTF-8",
                "PIP_CONFIG_FILE": "/dev/null",
            }
            run(["chroot", work, *args], env=env, inherit_env=False, log=log)

        chroot("python3", "-m", "venv", "/opt/venv")
        chroot(
            "/opt/venv/bin/pip", "install", "--quiet", "--no-index", "--no-cache-dir",
            "--find-links", "/tmp/wheels", requirement,
        )  # fmt: skip
        shutil.rmtree(work / "tmp" / "wheels")
        chroot("groupadd", "--gid", "10001", "reflow")
        chroot(
            "useradd", "--uid", "10001", "--gid", "10001", "--home-dir", "/opt/reflow",
            "--create-home", "--shell", "/usr/sbin/nologin", "reflow",
        )  # fmt: skip
        chroot("/opt/venv/bin/reflow", "--help")
        env = dict(BASE_ENV, JAVA_HOME=JAVA_HOME) if kind == "spark" else BASE_ENV
        config: dict[str, object] = {
            "Env": [f"{k}={v}" for k, v in env.items()],
            "WorkingDir": "/opt/reflow",
            "User": "10001:10001",
            "Cmd": ["reflow", "--help"],
        }
        if kind == "spark":
            if not ENTRYPOINT.exists():
                raise ClusterError(f"{ENTRYPOINT} is missing: the Spark image needs it")
            entry = work / "usr" / "local" / "bin" / "reflow-entrypoint"
            shutil.copy(ENTRYPOINT, entry)
            entry.chmod(0o755)
            config["Entrypoint"] = ["/usr/bin/tini", "-s", "--", "reflow-entrypoint"]
            chroot("/opt/venv/bin/python", "-c", "import pyspark; print(pyspark.__version__)")
        pack(work, image, config, log)
        shutil.rmtree(work)
        stamp(f"image-{kind}", key)
    return True


def pause_image(t: Timings) -> bool:
    name = f"image {PAUSE_IMAGE}"
    if stamp_content("image-pause") == PAUSE_IMAGE and archive(PAUSE_IMAGE).exists():
        t.skipped(name)
        return False
    with t.step(name):
        work = IMAGES / "pause.rootfs"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        shutil.copy(BIN / "pause", work / "pause")
        config = {"Entrypoint": ["/pause"], "User": "65535:65535"}
        pack(work, PAUSE_IMAGE, config, LOGS / "image-pause.log")
        shutil.rmtree(work)
        stamp("image-pause", PAUSE_IMAGE)
    return True


def pack(folder: Path, image: str, config: dict[str, object], log: Path) -> None:
    """Write ``folder`` as a one-layer ``docker save`` archive named ``image``."""
    out = IMAGES / (archive(image).name + ".d")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    layer = out / "layer.tar"
    run(
        ["tar", "--numeric-owner", "--xattrs", "-C", folder,
         "--exclude=./proc/*", "--exclude=./sys/*", "--exclude=./dev/*", "-cf", layer, "."],
        log=log,
    )  # fmt: skip
    layer_digest = file_sha256(layer)
    (out / layer_digest).mkdir()
    layer.rename(out / layer_digest / "layer.tar")
    image_config = {
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_digest}"]},
        "history": [{"created_by": "tests/k8s/cluster/images.py"}],
    }
    config_bytes = json.dumps(image_config, sort_keys=True).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    (out / config_name).write_bytes(config_bytes)
    manifest = [
        {"Config": config_name, "RepoTags": [image], "Layers": [f"{layer_digest}/layer.tar"]}
    ]
    (out / "manifest.json").write_text(json.dumps(manifest))
    tmp = archive(image).with_suffix(".partial")
    run(["tar", "-C", out, "-cf", tmp, "."], log=log)
    tmp.rename(archive(image))
    shutil.rmtree(out)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
