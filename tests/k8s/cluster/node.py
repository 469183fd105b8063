"""Start and stop the single-node cluster: etcd, the control plane, containerd, kubelet.

Every listener is on 127.0.0.1, except the API server: it listens on the host address of
the pods' bridge (``10.244.0.1:443``) so that pods (a Spark driver creating executors)
reach it; the host's kubeconfigs point there too. The service range is chosen so that
the ``kubernetes`` Service's cluster IP *is* that address: ``KUBERNETES_SERVICE_HOST``
and ``KUBERNETES_SERVICE_PORT`` work in pods without kube-proxy. Pods get addresses on
an isolated bridge with no default route and no masquerading: nothing leaves the machine.

Every pid started is recorded in ``<run>/pids``; ``stop`` ends them by those pids, then
unmounts and removes what the kubelet, containerd and CNI left in fixed system paths.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from binaries import BIN, CNI_BIN, ROOT
from images import archive
from layout import (
    CONTEXT,
    KUBECONFIG,
    NODE_NAME,
    PAUSE_IMAGE,
    PYTHON_IMAGE,
    RUN,
    SPARK_IMAGE,
    ClusterError,
    Timings,
    run,
)

BRIDGE = "reflow0"
BRIDGE_ADDRESS = "10.244.0.1"
BRIDGE_PREFIX = 16
POD_RANGE = ("10.244.1.2", "10.244.1.254")
# Its first address (the kubernetes Service) is the bridge address the API server binds.
SERVICE_RANGE = "10.244.0.0/24"
API_PORT = 443
API_URL = f"https://{BRIDGE_ADDRESS}:{API_PORT}"
ETCD_URL = "http://127.0.0.1:2379"
FEATURE_GATES = "GenericEphemeralVolume=true"

PKI = RUN / "pki"
PIDS = RUN / "pids"
LOGS = RUN / "logs"
CONTAINERD_ROOT = RUN / "containerd"
CONTAINERD_STATE = Path("/run/containerd")
CONTAINERD_SOCKET = CONTAINERD_STATE / "containerd.sock"
KUBELET_ROOT = Path("/var/lib/kubelet")
# Fixed paths the kubelet, containerd and CNI write to, whatever they are told.
SYSTEM_PATHS = [
    Path("/var/log/pods"),
    Path("/var/log/containers"),
    KUBELET_ROOT,
    Path("/var/lib/cni"),
    CONTAINERD_STATE,
]
NETNS = Path("/run/netns")
CGROUPS = Path("/sys/fs/cgroup")
# The kubelet sets these on start; stop puts the machine's values back.
SYSCTLS = ["vm/overcommit_memory", "kernel/panic", "kernel/panic_on_oops"]
# Stopped in this order: the node first, the store last.
COMPONENTS = [
    "kubelet",
    "containerd",
    "kube-scheduler",
    "kube-controller-manager",
    "kube-apiserver",
    "etcd",
]
PATH = f"{ROOT / 'usr/bin'}:{ROOT / 'usr/sbin'}:{os.environ.get('PATH', '/usr/bin:/bin')}"


# --- certificates and kubeconfigs -----------------------------------------------------


def certificates(t: Timings) -> None:
    """A CA, serving and client certificates, the service-account keys, the kubeconfigs."""
    with t.step("certificates and kubeconfigs (openssl)"):
        PKI.mkdir(parents=True, exist_ok=True)
        log = LOGS / "pki.log"
        run(
            ["openssl", "req", "-x509", "-new", "-nodes", "-newkey", "rsa:2048", "-days", "365",
             "-keyout", PKI / "ca.key", "-out", PKI / "ca.crt", "-subj", "/CN=reflow-local-ca",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
            log=log,
        )  # fmt: skip
        api_names = [
            "DNS:localhost", "DNS:kubernetes", "DNS:kubernetes.default",
            "DNS:kubernetes.default.svc", "DNS:kubernetes.default.svc.cluster.local",
            f"IP:{BRIDGE_ADDRESS}", "IP:127.0.0.1",
        ]  # fmt: skip
        issue("apiserver", "kube-apiserver", sans=api_names)
        issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client", org="system:masters")
        issue("admin", "reflow-admin", org="system:masters")
        issue("controller-manager", "system:kube-controller-manager")
        issue("scheduler", "system:kube-scheduler")
        issue("kubelet-client", f"system:node:{NODE_NAME}", org="system:nodes")
        issue("kubelet", NODE_NAME, sans=[f"DNS:{NODE_NAME}", "IP:127.0.0.1"])
        run(["openssl", "genrsa", "-out", PKI / "sa.key", "2048"], log=log)
        run(["openssl", "rsa", "-in", PKI / "sa.key", "-pubout", "-out", PKI / "sa.pub"], log=log)
        for name, cert in [
            ("controller-manager", "controller-manager"),
            ("scheduler", "scheduler"),
            ("kubelet", "kubelet-client"),
        ]:
            kubeconfig(RUN / f"{name}.kubeconfig", cert, f"{name}@{CONTEXT}")
        kubeconfig(KUBECONFIG, "admin", CONTEXT)


def issue(name: str, cn: str, *, org: str | None = None, sans: list[str] | None = None) -> None:
    """A key and a certificate signed by the CA, for both serving and client use."""
    log = LOGS / "pki.log"
    subject = (f"/O={org}" if org else "") + f"/CN={cn}"
    ext = PKI / f"{name}.ext"
    ext.write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
        + (f"subjectAltName={','.join(sans)}\n" if sans else "")
    )
    run(
        ["openssl", "req", "-new", "-nodes", "-newkey", "rsa:2048", "-keyout", PKI / f"{name}.key",
         "-out", PKI / f"{name}.csr", "-subj", subject],
        log=log,
    )  # fmt: skip
    run(
        ["openssl", "x509", "-req", "-in", PKI / f"{name}.csr", "-CA", PKI / "ca.crt",
         "-CAkey", PKI / "ca.key", "-CAcreateserial", "-days", "365", "-sha256",
         "-extfile", ext, "-out", PKI / f"{name}.crt"],
        log=log,
    )  # fmt: skip


def kubeconfig(path: Path, cert: str, context: str) -> None:
    def data(name: str) -> str:
        return base64.b64encode((PKI / name).read_bytes()).decode()

    user = cert
    path.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- name: {CONTEXT}\n  cluster:\n    server: {API_URL}\n"
        f"    certificate-authority-data: {data('ca.crt')}\n"
        f"users:\n- name: {user}\n  user:\n"
        f"    client-certificate-data: {data(cert + '.crt')}\n"
        f"    client-key-data: {data(cert + '.key')}\n"
        f"contexts:\n- name: {context}\n  context:\n    cluster: {CONTEXT}\n    user: {user}\n"
        f"current-context: {context}\n"
    )
    path.chmod(0o600)


# --- processes ------------------------------------------------------------------------


def start(name: str, argv: list[str | Path], env: dict[str, str] | None = None) -> int:
    """Start ``name`` in its own session, log to ``<run>/logs``, record its pid."""
    PIDS.mkdir(parents=True, exist_ok=True)
    LOGS.mkdir(parents=True, exist_ok=True)
    with (LOGS / f"{name}.log").open("ab") as out:
        proc = subprocess.Popen(
            [str(a) for a in argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PATH": PATH, **(env or {})},
            start_new_session=True,
        )
    (PIDS / f"{name}.pid").write_text(f"{proc.pid}\n{Path(str(argv[0])).resolve()}\n")
    return proc.pid


def recorded(name: str) -> tuple[int, str] | None:
    path = PIDS / f"{name}.pid"
    if not path.exists():
        return None
    pid, exe = path.read_text().split("\n")[:2]
    return int(pid), exe


def alive(pid: int, exe: str) -> bool:
    """The process is running and is still the program recorded (pids get reused)."""
    try:
        return os.readlink(f"/proc/{pid}/exe").removesuffix(" (deleted)") == exe
    except OSError:
        return False


def check_alive(names: list[str]) -> None:
    for name in names:
        rec = recorded(name)
        if rec is None or not alive(*rec):
            tail = ""
            log = LOGS / f"{name}.log"
            if log.exists():
                tail = "".join(log.read_text(errors="replace").splitlines(True)[-25:])
            raise ClusterError(f"{name} exited (log: {log}):\n{tail}")


def wait_for(what: str, check: Callable[[], bool], running: list[str], timeout: float) -> None:
    """Poll ``check`` until it holds; fail at the deadline or as soon as a process died."""
    deadline = time.monotonic() + timeout
    while True:
        check_alive(running)
        try:
            if check():
                return
        except (OSError, ValueError, KeyError, ClusterError):
            pass
        if time.monotonic() > deadline:
            raise ClusterError(f"{what}: not ready after {timeout:.0f} s (logs: {LOGS})")
        time.sleep(0.5)


def api(path: str, method: str = "GET", body: object = None, timeout: float = 5) -> object:
    """One call to the API server as the admin; JSON in and out (text for non-JSON)."""
    ctx = ssl.create_default_context(cafile=str(PKI / "ca.crt"))
    ctx.load_cert_chain(str(PKI / "admin.crt"), str(PKI / "admin.key"))
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(API_URL + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, context=ctx, timeout=timeout) as resp:
        text = resp.read().decode()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


# --- start ----------------------------------------------------------------------------


def running() -> bool:
    """Every component recorded and alive."""
    return all((rec := recorded(n)) is not None and alive(*rec) for n in COMPONENTS)


def up(t: Timings) -> None:
    """Start everything in order, waiting for each part; the node Ready ends it."""
    if RUN.exists():
        print("==> a previous start left state behind: cleaning it first", flush=True)
        down(t)
    RUN.mkdir(parents=True, exist_ok=True)
    LOGS.mkdir(parents=True, exist_ok=True)
    certificates(t)
    with t.step(f"bridge {BRIDGE} ({BRIDGE_ADDRESS}/{BRIDGE_PREFIX}, forwarding untouched)"):
        bridge()
    with t.step("etcd"):
        start_etcd()
        wait_for("etcd", lambda: http_ok(ETCD_URL + "/health"), ["etcd"], 60)
    with t.step("kube-apiserver (until /readyz)"):
        start_apiserver()
        wait_for("kube-apiserver", lambda: api("/readyz") == "ok", ["etcd", "kube-apiserver"], 120)
    with t.step("kube-controller-manager + kube-scheduler"):
        start_controller_manager()
        start_scheduler()
        wait_for(
            "the controller manager (default service account)",
            lambda: bool(api("/api/v1/namespaces/default/serviceaccounts/default")),
            ["kube-controller-manager", "kube-scheduler"],
            90,
        )
    with t.step("containerd"):
        start_containerd()
        wait_for("containerd", lambda: bool(ctr("version")), ["containerd"], 60)
    import_images(t, [PAUSE_IMAGE, PYTHON_IMAGE, SPARK_IMAGE])
    with t.step(f"kubelet (until node {NODE_NAME} is Ready)"):
        save_sysctls()
        start_kubelet()
        wait_for("node Ready", node_ready, COMPONENTS, 120)


def bridge() -> None:
    if run(["ip", "-o", "link", "show", BRIDGE], quiet=True, check=False):
        run(["ip", "link", "delete", BRIDGE])
    run(["ip", "link", "add", BRIDGE, "type", "bridge"])
    run(["ip", "addr", "add", f"{BRIDGE_ADDRESS}/{BRIDGE_PREFIX}", "dev", BRIDGE])
    run(["ip", "link", "set", BRIDGE, "up"])


def start_etcd() -> None:
    start(
        "etcd",
        [ROOT / "usr/bin/etcd", "--name=reflow", f"--data-dir={RUN / 'etcd'}",
         f"--listen-client-urls={ETCD_URL}", f"--advertise-client-urls={ETCD_URL}",
         "--listen-peer-urls=http://127.0.0.1:2380",
         "--initial-advertise-peer-urls=http://127.0.0.1:2380",
         "--initial-cluster=reflow=http://127.0.0.1:2380"],
    )  # fmt: skip


def start_apiserver() -> None:
    start(
        "kube-apiserver",
        [BIN / "kube-apiserver",
         f"--etcd-servers={ETCD_URL}",
         f"--bind-address={BRIDGE_ADDRESS}", f"--secure-port={API_PORT}", "--insecure-port=0",
         f"--advertise-address={BRIDGE_ADDRESS}", "--endpoint-reconciler-type=none",
         f"--service-cluster-ip-range={SERVICE_RANGE}",
         f"--cert-dir={PKI}",
         f"--client-ca-file={PKI / 'ca.crt'}",
         f"--tls-cert-file={PKI / 'apiserver.crt'}",
         f"--tls-private-key-file={PKI / 'apiserver.key'}",
         f"--kubelet-certificate-authority={PKI / 'ca.crt'}",
         f"--kubelet-client-certificate={PKI / 'apiserver-kubelet-client.crt'}",
         f"--kubelet-client-key={PKI / 'apiserver-kubelet-client.key'}",
         # The node is named localhost: the API server dials the kubelet by that name only,
         # never an address the node might report.
         "--kubelet-preferred-address-types=Hostname",
         f"--service-account-key-file={PKI / 'sa.pub'}",
         f"--service-account-signing-key-file={PKI / 'sa.key'}",
         "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
         "--authorization-mode=Node,RBAC",
         "--enable-admission-plugins=NodeRestriction",
         "--allow-privileged=true",
         "--profiling=false",
         f"--feature-gates={FEATURE_GATES}"],
    )  # fmt: skip


def start_controller_manager() -> None:
    kc = RUN / "controller-manager.kubeconfig"
    start(
        "kube-controller-manager",
        [BIN / "kube-controller-manager",
         f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}",
         f"--authorization-kubeconfig={kc}",
         "--bind-address=127.0.0.1", "--secure-port=10257", "--port=0",
         f"--cert-dir={PKI / 'controller-manager'}",
         f"--service-account-private-key-file={PKI / 'sa.key'}",
         f"--root-ca-file={PKI / 'ca.crt'}",
         f"--cluster-signing-cert-file={PKI / 'ca.crt'}",
         f"--cluster-signing-key-file={PKI / 'ca.key'}",
         "--use-service-account-credentials=true",
         "--cluster-name=reflow-local",
         "--leader-elect=false",
         "--profiling=false",
         f"--feature-gates={FEATURE_GATES}"],
    )  # fmt: skip


def start_scheduler() -> None:
    kc = RUN / "scheduler.kubeconfig"
    start(
        "kube-scheduler",
        [BIN / "kube-scheduler",
         f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}",
         f"--authorization-kubeconfig={kc}",
         "--bind-address=127.0.0.1", "--secure-port=10259", "--port=0",
         f"--cert-dir={PKI / 'scheduler'}",
         "--leader-elect=false",
         "--profiling=false",
         f"--feature-gates={FEATURE_GATES}"],
    )  # fmt: skip


def start_containerd() -> None:
    cni_conf = RUN / "cni"
    cni_conf.mkdir(parents=True, exist_ok=True)
    start_ip, end_ip = POD_RANGE
    (cni_conf / "10-reflow.conflist").write_text(
        json.dumps(
            {
                "cniVersion": "0.4.0",
                "name": "reflow",
                "plugins": [
                    {
                        "type": "bridge",
                        "bridge": BRIDGE,
                        # No gateway, no default route, no masquerading: pods reach the
                        # bridge's subnet and nothing else.
                        "isGateway": False,
                        "isDefaultGateway": False,
                        "ipMasq": False,
                        "hairpinMode": True,
                        "ipam": {
                            "type": "host-local",
                            "ranges": [
                                [
                                    {
                                        "subnet": f"{BRIDGE_ADDRESS.rsplit('.', 2)[0]}.0.0/"
                                        f"{BRIDGE_PREFIX}",
                                        "rangeStart": start_ip,
                                        "rangeEnd": end_ip,
                                    }
                                ]
                            ],
                        },
                    }
                ],
            },
            indent=2,
        )
    )
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    config = RUN / "containerd.toml"
    config.write_text(
        f"""version = 2
root = "{CONTAINERD_ROOT}"
state = "{CONTAINERD_STATE}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]

[grpc]
  address = "{CONTAINERD_SOCKET}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{CONTAINERD_ROOT / "opt"}"

[{cri}]
  sandbox_image = "docker.io/library/{PAUSE_IMAGE}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  disable_tcp_service = true
  disable_apparmor = true
  enable_selinux = false
  # Root here lacks CAP_SYS_RESOURCE: no process may lower its OOM score below its parent's,
  # and runc fails a sandbox asking for -998. Clamp requests to containerd's own score.
  restrict_oom_score_adj = true

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  BinaryName = "{ROOT / "usr/bin/runc"}"
  SystemdCgroup = false

[{cri}.cni]
  bin_dir = "{CNI_BIN}"
  conf_dir = "{cni_conf}"
"""
    )
    start("containerd", [ROOT / "usr/bin/containerd", f"--config={config}"])


def ctr(*args: str | Path) -> str:
    return run(
        [ROOT / "usr/bin/ctr", "--address", CONTAINERD_SOCKET, "--namespace", "k8s.io", *args]
    )


def import_images(t: Timings, names: list[str]) -> None:
    """Import image archives into containerd's k8s.io namespace (replacing older ones)."""
    with t.step(f"import {', '.join(names)} (ctr -n k8s.io images import)"):
        for image in names:
            ctr("images", "import", archive(image))


def save_sysctls() -> None:
    saved = RUN / "sysctls.json"
    if not saved.exists():
        values = {k: (Path("/proc/sys") / k).read_text().strip() for k in SYSCTLS}
        saved.write_text(json.dumps(values))


def start_kubelet() -> None:
    resolv_conf = RUN / "resolv.conf"
    resolv_conf.write_text("")
    config = RUN / "kubelet.yaml"
    config.write_text(
        json.dumps(
            {
                "apiVersion": "kubelet.config.k8s.io/v1beta1",
                "kind": "KubeletConfiguration",
                "address": "127.0.0.1",
                "port": 10250,
                "readOnlyPort": 0,
                "healthzBindAddress": "127.0.0.1",
                "healthzPort": 10248,
                "tlsCertFile": str(PKI / "kubelet.crt"),
                "tlsPrivateKeyFile": str(PKI / "kubelet.key"),
                "authentication": {
                    "anonymous": {"enabled": False},
                    "webhook": {"enabled": True},
                    "x509": {"clientCAFile": str(PKI / "ca.crt")},
                },
                "authorization": {"mode": "Webhook"},
                "cgroupDriver": "cgroupfs",
                "failSwapOn": False,
                "featureGates": {"GenericEphemeralVolume": True},
                # No cluster DNS: pods get an empty resolv.conf rather than the host's.
                "resolvConf": str(resolv_conf),
                "makeIPTablesUtilChains": False,
                "volumePluginDir": str(RUN / "kubelet-plugins"),
                # The imported images can never be pulled again: never collect them, and
                # do not evict or taint the node on a nearly full disk.
                "imageGCHighThresholdPercent": 100,
                "imageGCLowThresholdPercent": 99,
                "evictionHard": {
                    "memory.available": "100Mi",
                    "nodefs.available": "1%",
                    "imagefs.available": "1%",
                    "nodefs.inodesFree": "1%",
                },
            },
            indent=2,
        )
    )
    start(
        "kubelet",
        [BIN / "kubelet",
         f"--config={config}",
         f"--kubeconfig={RUN / 'kubelet.kubeconfig'}",
         "--container-runtime=remote",
         f"--container-runtime-endpoint=unix://{CONTAINERD_SOCKET}",
         f"--pod-infra-container-image={PAUSE_IMAGE}",
         f"--hostname-override={NODE_NAME}",
         f"--node-ip={BRIDGE_ADDRESS}",
         f"--root-dir={KUBELET_ROOT}",
         "--v=1"],
        # Its AWS credential provider would otherwise query the cloud metadata address.
        env={"AWS_EC2_METADATA_DISABLED": "true"},
    )  # fmt: skip


def ready() -> bool:
    """Every component alive and the node Ready (False, not an error, when it is not)."""
    try:
        return running() and node_ready()
    except (OSError, ValueError, KeyError):
        return False


def node_ready() -> bool:
    node = api(f"/api/v1/nodes/{NODE_NAME}")
    assert isinstance(node, dict)
    return any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"]["conditions"])


# --- stop -----------------------------------------------------------------------------


def down(t: Timings) -> None:
    """Stop what was started, by recorded pid, and remove what it left; safe to repeat."""
    with t.step("stop kubelet"):
        stop("kubelet")
    with t.step("stop pods' containers and containerd"):
        kill_cgroup_members()
        stop("containerd")
        stop_shims()
    with t.step("stop control plane and etcd"):
        for name in ["kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"]:
            stop(name)
    failed: list[str] = []

    def attempt(action: Callable[[], object]) -> None:
        # Each clean-up is tried even when one before it failed; failures are listed last.
        try:
            action()
        except (OSError, ClusterError) as e:
            failed.append(str(e).strip())

    with t.step("unmount and remove kubelet, containerd and CNI paths"):
        # Only the pods' network namespaces: others' (ip netns add) are left alone.
        prefixes = [f"{KUBELET_ROOT}/", f"{CONTAINERD_ROOT}/", f"{CONTAINERD_STATE}/"]
        attempt(lambda: unmount_under([*prefixes, f"{NETNS}/cni-"]))
        attempt(remove_netns)
        for path in [*SYSTEM_PATHS, CONTAINERD_ROOT]:
            if path.exists():
                attempt(lambda path=path: run(["rm", "-rf", "--one-file-system", path]))
        attempt(remove_cgroups)
        if run(["ip", "-o", "link", "show", BRIDGE], quiet=True, check=False):
            attempt(lambda: run(["ip", "link", "delete", BRIDGE]))
        attempt(restore_sysctls)
    if failed:
        raise ClusterError(
            "clean-up left things behind (run the stop again):\n" + "\n".join(failed)
        )
    with t.step(f"remove run state {RUN}"):
        run(["rm", "-rf", RUN])


def stop(name: str, grace: float = 15) -> None:
    """TERM the recorded pid, KILL it after ``grace`` seconds."""
    rec = recorded(name)
    if rec is None:
        return
    pid, exe = rec
    if alive(pid, exe):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while alive(pid, exe) and time.monotonic() < deadline:
            time.sleep(0.2)
        if alive(pid, exe):
            print(f"    {name} ({pid}) did not stop in {grace:.0f} s: KILL", flush=True)
            os.kill(pid, signal.SIGKILL)
            while alive(pid, exe):
                time.sleep(0.1)
    (PIDS / f"{name}.pid").unlink()


def cgroup_dirs() -> list[Path]:
    """Every kubepods cgroup folder, deepest first."""
    found = [p for p in CGROUPS.glob("*/kubepods") if p.is_dir()]
    dirs = [d for top in found for d in top.rglob("*") if d.is_dir()] + found
    return sorted(dirs, key=lambda p: len(p.parts), reverse=True)


def kill_cgroup_members() -> None:
    """KILL the pods' processes: every process in a kubepods cgroup."""
    for _ in range(20):
        pids = set()
        for d in cgroup_dirs():
            procs = d / "cgroup.procs"
            if procs.exists():
                pids.update(int(p) for p in procs.read_text().split())
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.25)


def stop_shims() -> None:
    """The containers' shims outlive containerd: end those of this installation's shim."""
    shim = str((ROOT / "usr/bin/containerd-shim-runc-v2").resolve())
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = [
            int(p.name)
            for p in Path("/proc").iterdir()
            if p.name.isdigit() and alive(int(p.name), shim)
        ]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        # Until they are gone, for at most a few seconds (then the next signal, or left).
        deadline = time.monotonic() + 5
        while any(alive(pid, shim) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.1)


def unmount_under(prefixes: list[str]) -> None:
    """Unmount, deepest first, every mount point whose path starts with one of ``prefixes``.

    A prefix ending in ``/`` also matches its folder itself: the kubelet bind-mounts its
    root folder onto itself.
    """
    mounts = {
        point
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if (point := line.split()[4]).startswith(tuple(prefixes)) or point + "/" in prefixes
    }
    for mount in sorted(mounts, key=len, reverse=True):
        run(["umount", "-l", mount], check=False, quiet=True)


def remove_netns() -> None:
    """The pods' network namespaces (CNI names them cni-…); the folder only if then empty."""
    if not NETNS.exists():
        return
    for ns in NETNS.glob("cni-*"):
        ns.unlink()
    if not any(NETNS.iterdir()):
        NETNS.rmdir()


def remove_cgroups() -> None:
    for _ in range(10):
        dirs = cgroup_dirs()
        if not dirs:
            return
        for d in dirs:
            with contextlib.suppress(OSError):
                d.rmdir()
        time.sleep(0.5)
    left = ", ".join(str(d) for d in cgroup_dirs())
    if left:
        print(f"    could not remove cgroups: {left}", flush=True)


def restore_sysctls() -> None:
    saved = RUN / "sysctls.json"
    if saved.exists():
        for key, value in json.loads(saved.read_text()).items():
            (Path("/proc/sys") / key).write_text(value + "\n")
