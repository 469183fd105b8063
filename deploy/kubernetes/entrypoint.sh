#!/usr/bin/env bash
# The image's entrypoint. The pods of tries and of reflow's own processes set a command,
# which replaces this; it runs for the pods Spark starts itself. A Spark driver with a
# k8s:// master starts each executor pod with `args: ["executor"]` and no command, and
# describes the executor in environment variables (the contract of Spark's own images).
# pip's PySpark ships no entrypoint for that: this is it, for the JVM and jars of the
# PySpark installed in the image.
set -euo pipefail

if [ "${1:-}" != executor ]; then
  exec "$@"
fi
shift

spark_home=${SPARK_HOME:-$(python3 -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')}
java=${JAVA_HOME:+$JAVA_HOME/bin/}java

# The executor's JVM options come numbered (SPARK_JAVA_OPT_0, _1, ...), one option each;
# they hold the Java 17 module options Spark needs.
java_opts=()
while IFS= read -r name; do
  java_opts+=("${!name}")
done < <(compgen -e | grep '^SPARK_JAVA_OPT_' | sort -t_ -k4 -n || true)

classpath="$spark_home/jars/*${SPARK_CLASSPATH:+:$SPARK_CLASSPATH}"
memory=${SPARK_EXECUTOR_MEMORY:-1g}

exec "$java" "${java_opts[@]}" -Xms"$memory" -Xmx"$memory" -cp "$classpath" \
  org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend \
  --driver-url "$SPARK_DRIVER_URL" \
  --executor-id "$SPARK_EXECUTOR_ID" \
  --cores "$SPARK_EXECUTOR_CORES" \
  --app-id "$SPARK_APPLICATION_ID" \
  --hostname "$SPARK_EXECUTOR_POD_IP" \
  --resourceProfileId "${SPARK_RESOURCE_PROFILE_ID:-0}" \
  --podName "$SPARK_EXECUTOR_POD_NAME" \
  "$@"
