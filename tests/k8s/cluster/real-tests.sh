#!/usr/bin/env bash
# The kubernetes tests against the real local cluster (make k8s-cluster), when it is built
# on this machine: a cluster that is running is used as it is; one that is built but
# stopped is started for the tests and stopped after them. The last line says whether the
# tests ran. Usage: real-tests.sh PYTHON (the venv's).
set -uo pipefail
cd "$(dirname "$0")/../../.."
python=${1:-.venv/bin/python}
cluster() { "$python" tests/k8s/cluster/cluster.py "$@"; }
run=$HOME/.cache/reflow-k8s/run

if cluster ready; then
  echo "Real Kubernetes: using the local cluster that is running."
elif cluster built; then
  echo "Real Kubernetes: starting the local cluster for these tests (stopped after them)."
  trap 'cluster down > /dev/null' EXIT
  start=$SECONDS
  if ! cluster up; then
    echo "Real Kubernetes: the tests did NOT run: the local cluster did not start."
    exit 1
  fi
  echo "Real Kubernetes: the cluster started in $((SECONDS - start)) s."
else
  echo "Real Kubernetes: the tests did NOT run (no local cluster built here; make k8s-cluster builds and starts one)."
  exit 0
fi

start=$SECONDS
KUBECONFIG=$run/kubeconfig REFLOW_K8S_CONTEXT=reflow-local \
  REFLOW_K8S_TEST_IMAGE=reflow-k8s-python:dev REFLOW_K8S_SPARK_IMAGE=reflow-k8s-spark:dev \
  "$(dirname "$python")/pytest" -q -p no:cacheprovider -k "not postgres" \
  tests/k8s/test_launcher.py tests/k8s/test_versions.py tests/k8s/test_spark_real.py \
  tests/k8s/test_deploy_real.py
status=$?
if [ $status -eq 0 ]; then
  echo "Real Kubernetes: the tests RAN on the local cluster (Kubernetes 1.20.2) and passed in $((SECONDS - start)) s."
else
  echo "Real Kubernetes: the tests RAN on the local cluster and FAILED."
fi
exit $status
