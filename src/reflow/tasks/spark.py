"""``SparkSubmit``: a task that runs a Spark application with ``spark-submit``.

The driver runs inside the try (client mode), so the launcher's timeout, cancel and retry
apply to the whole application: killing the try's process tree kills the driver JVM, and
on Kubernetes deleting the try's pod deletes the executor pods it owns.

Masters: ``local[*]`` (the default: embedded, zero set-up), ``spark://host:port``
(standalone) and ``k8s://...`` (spark-submit in client mode inside the try's pod, with the
driver's address and pod name taken from ``REFLOW_POD_IP`` / ``REFLOW_POD_NAME``, which
the Kubernetes launcher sets from the downward API).
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from reflow.core import trylines
from reflow.core.errors import PipelineError, ReflowError, TaskError
from reflow.core.pipeline import Task
from reflow.core.pod import dns_label, label_value
from reflow.core.templating import check as check_template
from reflow.core.templating import render_value

DEFAULT_MASTER = "local[*]"
MASTER_ENV = "REFLOW_SPARK_MASTER"
POD_IP_ENV = "REFLOW_POD_IP"
POD_NAME_ENV = "REFLOW_POD_NAME"
POD_NAMESPACE_ENV = "REFLOW_POD_NAMESPACE"
POD_IMAGE_ENV = "REFLOW_POD_IMAGE"
# On Kubernetes spark-submit runs in the try's pod: found there, from the image's
# SPARK_HOME or else its PATH.
K8S_SPARK_SUBMIT = '"${SPARK_HOME:+$SPARK_HOME/bin/}spark-submit"'
NO_JAVA = "SparkSubmit needs Java 17: no java on PATH and JAVA_HOME is not set"

_MEMORY = re.compile(r"^[1-9][0-9]*[kmgtp]b?$", re.IGNORECASE)
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")
_CLAIM_KEYS = {"size", "storage_class", "mount"}
_LOCAL_DIR = "spark.kubernetes.executor.volumes.persistentVolumeClaim.spark-local-dir-1"
# Spark appends "-exec-<n>" to the prefix; the whole name must stay a DNS label.
_POD_PREFIX_MAX = 47
# How much of a try's log is searched for the application id: the driver reports it while
# starting, and the scheduler reads it as the try ends, so large logs must stay cheap.
_LOG_SCAN = 1 << 20
_SET_APP_ID = re.compile(r"spark\.app\.id=(spark-[0-9a-f]{32})(?![\w-])")
_APP_ID = re.compile(
    r"(?<![\w-])("
    r"local-[0-9]{13}"
    r"|app-[0-9]{14}-[0-9]{4,}"
    r"|application_[0-9]{13}_[0-9]{4,}"
    r"|spark-[0-9a-f]{32}"
    r")(?![\w-])"
)

_LISTS = ("packages", "repositories", "exclude_packages", "jars", "py_files", "files", "archives")
_MEMORIES = ("driver_memory", "executor_memory")
_COUNTS = ("driver_cores", "executor_cores", "num_executors", "total_executor_cores")
# (field, spark-submit option) in the order they appear on the command line.
_OPTIONS = (
    ("main_class", "--class"),
    ("packages", "--packages"),
    ("repositories", "--repositories"),
    ("exclude_packages", "--exclude-packages"),
    ("jars", "--jars"),
    ("py_files", "--py-files"),
    ("files", "--files"),
    ("archives", "--archives"),
    ("driver_memory", "--driver-memory"),
    ("driver_cores", "--driver-cores"),
    ("driver_java_options", "--driver-java-options"),
    ("driver_class_path", "--driver-class-path"),
    ("executor_memory", "--executor-memory"),
    ("executor_cores", "--executor-cores"),
    ("num_executors", "--num-executors"),
    ("total_executor_cores", "--total-executor-cores"),
    ("properties_file", "--properties-file"),
)


class SparkSubmit(Task):
    """Run a Spark application: a ``.py`` file, or a jar and its ``main_class``.

    The keyword arguments mirror spark-submit's options; ``conf`` holds ``--conf`` pairs.
    Every string (keys of ``conf`` and ``env`` included) is a template rendered with the
    run context. The command is an argv list: no value ever passes through a shell (on
    Kubernetes, where a shell reads the pod's address, each value is shell-quoted).
    ``master`` defaults to ``$REFLOW_SPARK_MASTER``, else ``local[*]``.
    """

    kind = "spark"
    template_fields = (
        "application",
        "application_args",
        "main_class",
        "master",
        "name",
        "conf",
        *_LISTS,
        *_MEMORIES,
        *_COUNTS,
        "driver_java_options",
        "driver_class_path",
        "properties_file",
        "spark_home",
        "namespace",
        "image",
        "executor_pod_name_prefix",
        "spark_local_dir_claim",
        "env",
        "cwd",
    )

    def __init__(
        self,
        task_id: str,
        application: str,
        *,
        application_args: Sequence[Any] = (),
        main_class: str | None = None,
        master: str | None = None,
        name: str | None = None,
        conf: Mapping[str, Any] | None = None,
        packages: Sequence[str] | str = (),
        repositories: Sequence[str] | str = (),
        exclude_packages: Sequence[str] | str = (),
        jars: Sequence[str] | str = (),
        py_files: Sequence[str] | str = (),
        files: Sequence[str] | str = (),
        archives: Sequence[str] | str = (),
        driver_memory: str | None = None,
        driver_cores: int | str | None = None,
        executor_memory: str | None = None,
        executor_cores: int | str | None = None,
        num_executors: int | str | None = None,
        total_executor_cores: int | str | None = None,
        driver_java_options: str | None = None,
        driver_class_path: str | None = None,
        properties_file: str | None = None,
        verbose: bool = False,
        spark_home: str | None = None,
        namespace: str | None = None,
        image: str | None = None,
        executor_pod_name_prefix: str | None = None,
        spark_local_dir_claim: Mapping[str, str] | None = None,
        cwd: str | None = None,
        **options: Any,
    ) -> None:
        super().__init__(task_id, **options)
        self.application = application
        self.application_args = list(application_args)
        self.main_class = main_class
        self.master = master
        self.name = name
        self.conf: dict[str, Any] = dict(conf or {})
        self.packages = _as_list(packages)
        self.repositories = _as_list(repositories)
        self.exclude_packages = _as_list(exclude_packages)
        self.jars = _as_list(jars)
        self.py_files = _as_list(py_files)
        self.files = _as_list(files)
        self.archives = _as_list(archives)
        self.driver_memory = driver_memory
        self.driver_cores = driver_cores
        self.executor_memory = executor_memory
        self.executor_cores = executor_cores
        self.num_executors = num_executors
        self.total_executor_cores = total_executor_cores
        self.driver_java_options = driver_java_options
        self.driver_class_path = driver_class_path
        self.properties_file = properties_file
        self.verbose = verbose
        self.spark_home = spark_home
        self.namespace = namespace
        self.image = image
        self.executor_pod_name_prefix = executor_pod_name_prefix
        self.spark_local_dir_claim = (
            dict(spark_local_dir_claim) if spark_local_dir_claim is not None else None
        )
        self.cwd = cwd

    def extra_fields(self) -> tuple[str, ...]:
        return ("verbose",)

    # -- validation ---------------------------------------------------------------------
    def check(self) -> None:
        """Validate the definition; templated values are validated again once rendered."""
        for name in self.template_fields:
            _check_templates(getattr(self, name))
        _validate(self._fields(), PipelineError)

    def _fields(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.template_fields if name != "env"}

    # -- building a try -----------------------------------------------------------------
    def render(self, context: Mapping[str, Any], *, remote: bool = False) -> dict[str, Any]:
        """The fields rendered for one try, the master resolved, the env completed.
        ``remote``: the try runs in a pod, where spark-submit and Python are the image's.

        Raises TemplateError when a field does not render and TaskError when a rendered
        value is invalid.
        """
        rendered: dict[str, Any] = render_value(self._fields(), context)
        env = {str(k): str(v) for k, v in render_value(self.merged_env(), context).items()}
        _validate(rendered, TaskError)
        effective = {**os.environ, **env}
        master = rendered["master"] or effective.get(MASTER_ENV) or DEFAULT_MASTER
        rendered["master"] = master
        rendered["name"] = (
            rendered["name"] or f"{context['pipeline']}.{self.task_id}.{context['ds']}"
        )
        rendered["remote"] = remote
        py_app = str(rendered["application"]).endswith(".py")
        if py_app and not remote and not master.startswith("k8s://"):
            # The driver (and, locally, the Python workers) use reflow's interpreter, which
            # has PySpark, unless the environment says otherwise.
            var = "PYSPARK_PYTHON" if master.startswith("local") else "PYSPARK_DRIVER_PYTHON"
            if not effective.get(var) and not effective.get("PYSPARK_PYTHON"):
                env[var] = sys.executable
        rendered["env"] = env
        rendered["verbose"] = self.verbose
        rendered["identity"] = {
            "pipeline": str(context["pipeline"]),
            "run_id": str(context["run_id"]),
            "task": self.task_id,
            "try_number": str(context["try_number"]),
            "ds_nodash": str(context["ds_nodash"]),
        }
        return rendered

    def argv(self, rendered: Mapping[str, Any]) -> tuple[str, ...]:
        """The command of one try. Raises TaskError when Spark or Java cannot be found."""
        master = str(rendered["master"])
        if master.startswith("k8s://") or rendered.get("remote"):
            if rendered["spark_home"]:
                program = shlex.quote(os.path.join(rendered["spark_home"], "bin", "spark-submit"))
            else:
                program = K8S_SPARK_SUBMIT
            script = " ".join(
                (
                    "exec",
                    program,
                    *(w if isinstance(w, _Shell) else shlex.quote(w) for w in command(rendered)),
                )
            )
            return ("/bin/sh", "-c", script)
        env = {**os.environ, **rendered["env"]}
        if find_java(env) is None:
            home = env.get("JAVA_HOME")
            raise TaskError(
                f"SparkSubmit needs Java 17: JAVA_HOME={home} has no bin/java" if home else NO_JAVA
            )
        return (find_spark_submit(rendered["spark_home"], env), *command(rendered))

    def app_id_from_log(self, log_path: str) -> str | None:
        """The Spark application id in the try's log (its beginning, where Spark and the
        application report it), or None. A driver with a ``k8s://`` master in client mode
        reports none: its id is the ``spark.app.id`` its command set, in reflow's own
        opening lines."""
        try:
            with open(log_path, "rb") as fh:
                head = fh.read(_LOG_SCAN).decode("utf-8", "replace")
        except OSError:
            return None
        found = parse_app_id(trylines.task_output(head))
        if found is None:
            ours = "".join(line for line in head.splitlines(True) if trylines.is_ours(line))
            match = _SET_APP_ID.search(ours)
            found = match.group(1) if match else None
        return found


class _Shell(str):
    """A word of the Kubernetes shell form that the shell must expand (not quoted)."""

    __slots__ = ()


def command(rendered: Mapping[str, Any]) -> list[str]:
    """spark-submit's arguments (without the program) for rendered fields."""
    master = str(rendered["master"])
    words: list[str] = ["--master", master]
    conf: dict[str, str] = {}
    if master.startswith("k8s://"):
        words += ["--deploy-mode", "client"]
        conf.update(_k8s_conf(rendered))
    words += ["--name", str(rendered["name"])]
    for name, option in _OPTIONS:
        value = rendered[name]
        if value in (None, "", []):
            continue
        words += [option, ",".join(value) if name in _LISTS else str(value)]
    if rendered.get("verbose"):
        words.append("--verbose")
    conf.update({str(k): _conf_value(v) for k, v in rendered["conf"].items()})
    for key, value in conf.items():
        words += ["--conf", value if isinstance(value, _Shell) else f"{key}={value}"]
    return [*words, str(rendered["application"]), *(str(a) for a in rendered["application_args"])]


def _k8s_conf(rendered: Mapping[str, Any]) -> dict[str, str]:
    who = rendered["identity"]
    prefix = rendered["executor_pod_name_prefix"] or _default_pod_prefix(who)
    conf: dict[str, str] = {
        # Client mode in the try's pod: executors call back to the pod's IP, and the
        # driver pod owns them (they are deleted with it).
        "spark.driver.host": _Shell(
            f'spark.driver.host="${{{POD_IP_ENV}:?is not set, expected the pod IP}}"'
        ),
        "spark.kubernetes.driver.pod.name": _Shell(
            f'spark.kubernetes.driver.pod.name="${{{POD_NAME_ENV}:?is not set, '
            'expected the pod name}"'
        ),
        "spark.kubernetes.executor.podNamePrefix": dns_label(prefix, _POD_PREFIX_MAX),
        "spark.kubernetes.executor.label.reflow-pipeline": label_value(who["pipeline"]),
        "spark.kubernetes.executor.label.reflow-run": label_value(who["run_id"]),
        "spark.kubernetes.executor.label.reflow-task": label_value(who["task"]),
        # In client mode the driver prints no application id; this one is the try's own
        # (Spark labels the executors with it), and reflow's opening lines of the try's
        # log show it in the command, where app_id_from_log finds it.
        "spark.app.id": k8s_app_id(who),
    }
    # Executors go to the driver pod's namespace and run its image unless told otherwise.
    if rendered["namespace"]:
        conf["spark.kubernetes.namespace"] = str(rendered["namespace"])
    else:
        conf["spark.kubernetes.namespace"] = _Shell(
            f'spark.kubernetes.namespace="${{{POD_NAMESPACE_ENV}:-default}}"'
        )
    if rendered["image"]:
        conf["spark.kubernetes.container.image"] = str(rendered["image"])
    else:
        conf["spark.kubernetes.container.image"] = _Shell(
            f'spark.kubernetes.container.image="${{{POD_IMAGE_ENV}:?is not set, '
            'expected the pod image}"'
        )
    claim = rendered["spark_local_dir_claim"]
    if claim:
        conf[f"{_LOCAL_DIR}.options.claimName"] = "OnDemand"
        if claim.get("storage_class"):
            conf[f"{_LOCAL_DIR}.options.storageClass"] = str(claim["storage_class"])
        conf[f"{_LOCAL_DIR}.options.sizeLimit"] = str(claim["size"])
        conf[f"{_LOCAL_DIR}.mount.path"] = str(claim.get("mount") or "/data")
        conf[f"{_LOCAL_DIR}.mount.readOnly"] = "false"
        # The driver (the try's pod) owns the claims: they go when the try's pod goes.
        conf["spark.kubernetes.driver.ownPersistentVolumeClaim"] = "true"
        conf["spark.kubernetes.driver.reusePersistentVolumeClaim"] = "true"
    return conf


def k8s_app_id(who: Mapping[str, str]) -> str:
    """The application id of one try's Spark driver with a ``k8s://`` master: the form
    Spark gives its own (``spark-`` and 32 hex digits), from the try's identity."""
    key = "\0".join((who["pipeline"], who["run_id"], who["task"], who["try_number"]))
    return "spark-" + hashlib.sha256(key.encode()).hexdigest()[:32]


def _default_pod_prefix(who: Mapping[str, str]) -> str:
    # The run id's hash tells apart two manual runs of the same date.
    run = hashlib.sha256(who["run_id"].encode()).hexdigest()[:6]
    return f"{who['pipeline']}-{who['task']}-{who['ds_nodash']}-{run}-{who['try_number']}"


# -- the environment of the try --------------------------------------------------------------
def find_java(env: Mapping[str, str]) -> str | None:
    """The java that spark-submit will use: ``$JAVA_HOME/bin/java``, else java on PATH."""
    home = env.get("JAVA_HOME")
    if home:
        java = os.path.join(home, "bin", "java")
        return java if os.access(java, os.X_OK) else None
    return shutil.which("java", path=env.get("PATH", ""))


def find_spark_submit(spark_home: str | None, env: Mapping[str, str]) -> str:
    """``<spark_home>/bin/spark-submit``: the task's, else ``$SPARK_HOME``, else PySpark's."""
    home = spark_home or env.get("SPARK_HOME")
    if not home:
        try:
            from pyspark.find_spark_home import _find_spark_home  # light: no JVM, no py4j
        except ImportError:
            raise TaskError(
                "SparkSubmit needs Spark: set SPARK_HOME or install PySpark "
                "(pip install 'reflow[spark]')"
            ) from None
        home = _find_spark_home()
    program = os.path.join(home, "bin", "spark-submit")
    if not os.access(program, os.X_OK):
        raise TaskError(f"SparkSubmit: no spark-submit at {program}")
    return program


def parse_app_id(log_text: str) -> str | None:
    """The first Spark application id in driver output (local, standalone, YARN or
    Kubernetes form), or None."""
    match = _APP_ID.search(log_text)
    return match.group(1) if match else None


# -- validation ------------------------------------------------------------------------------
def _as_list(value: Sequence[str] | str) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _templated(value: Any) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


def _check_templates(value: Any) -> None:
    if isinstance(value, str):
        check_template(value)
    elif isinstance(value, Mapping):
        for k, v in value.items():
            _check_templates(k)
            _check_templates(v)
    elif isinstance(value, list | tuple):
        for v in value:
            _check_templates(v)


def _conf_value(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _validate(fields: dict[str, Any], error: type[ReflowError]) -> None:
    """Check field values (in place: counts become ints); templates are skipped."""
    app = fields["application"]
    if not isinstance(app, str) or not app.strip():
        raise error("application must be a .py file or a jar")
    if not _templated(app):
        if app.endswith(".jar") and not fields["main_class"]:
            raise error(f"application {app!r} is a jar: main_class is required")
        if app.endswith(".py") and fields["main_class"]:
            raise error("main_class is only for a jar application")
    if not isinstance(fields["application_args"], list | tuple):
        raise error("application_args must be a list")
    if not isinstance(fields["conf"], Mapping):
        raise error("conf must be a dict of Spark properties")
    for key, value in fields["conf"].items():
        if not isinstance(key, str) or not (_templated(key) or key.startswith("spark.")):
            raise error(f"conf key {key!r} is not a Spark property (they start with 'spark.')")
        if value is None or isinstance(value, Mapping | list | tuple):
            raise error(f"conf {key!r}: expected a string, number or bool, got {value!r}")
    for name in _MEMORIES:
        value = fields[name]
        if value is not None and not _templated(value) and not _MEMORY.match(str(value)):
            raise error(f"{name} {value!r}: expected a size like '512m' or '2g'")
    for name in _COUNTS:
        value = fields[name]
        if value is None or _templated(value):
            continue
        count = _positive_int(value)
        if count is None:
            raise error(f"{name} must be a positive integer, got {value!r}")
        fields[name] = count
    claim = fields["spark_local_dir_claim"]
    if claim is not None:
        if not isinstance(claim, Mapping) or not claim.get("size"):
            raise error("spark_local_dir_claim needs a size, e.g. dict(size='100Gi')")
        unknown = sorted(set(claim) - _CLAIM_KEYS)
        if unknown:
            raise error(f"spark_local_dir_claim: unknown key {', '.join(unknown)}")
        size = claim["size"]
        if not _templated(size) and not _QUANTITY.match(str(size)):
            raise error(f"spark_local_dir_claim size {size!r}: expected e.g. '100Gi'")


def _positive_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    return value if isinstance(value, int) and value > 0 else None
