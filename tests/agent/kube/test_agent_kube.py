"""A real ``meshlet serve`` with a kubeconfig pointing at the fake API server:
a ``Model`` becomes a served model, and its status says so."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import tritonclient.grpc as triton

from agent.process import AgentProcess
from tests.agent.kube.apiserver import FakeApiServer
from tests.clients import check_sums, infer
from tests.conftest import wait_for


def test_a_model_resource_is_served_and_its_status_written(
    apiserver: FakeApiServer, start_agent: Callable[..., AgentProcess], tmp_path: Path
) -> None:
    apiserver.create({
        "apiVersion": "meshlet.io/v1alpha1", "kind": "Model",
        "metadata": {"name": "greeter", "namespace": "demo"},
        "spec": {"modelFormat": {"name": "simple-string"},
                 "storage": {"uri": "builtin://simple-string"}},
    })
    kubeconfig = apiserver.write_kubeconfig(tmp_path / "kubeconfig")
    agent = start_agent(
        "--kube", "on", "--kubeconfig", str(kubeconfig), "--watch-namespaces", "demo",
        MESHLET_KUBE_STATUS_INTERVAL_S="0.2", MESHLET_KUBE_BACKOFF_INITIAL_S="0.1",
    )

    def state() -> str:
        return str(apiserver.status("Model", "demo", "greeter").get("state", ""))

    wait_for(lambda: state() == "Pending", 60, "the first status")
    ready = apiserver.status("Model", "demo", "greeter")["conditions"][0]
    assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "True", "Standby")
    client = triton.InferenceServerClient(agent.address)
    try:
        check_sums(infer(client, "greeter"))  # the resource's name, as clients use it
    finally:
        client.close()
    wait_for(lambda: state() == "Loaded", 30, "Loaded after an inference")
    status = apiserver.status("Model", "demo", "greeter")
    assert (status["copies"], status["observedGeneration"]) == (1, 1)
    assert agent.stop() == 0
    log = agent.log_path.read_text()
    assert "kubernetes: on (kubeconfig" in log
    assert log.index("stopping: Kubernetes watchers") < log.index("stopped")


def test_two_agents_in_a_cluster_share_the_resources(
    apiserver: FakeApiServer, start_agent: Callable[..., AgentProcess], tmp_path: Path
) -> None:
    names = [f"m{i}" for i in range(8)]
    for name in names:
        apiserver.create({
            "apiVersion": "meshlet.io/v1alpha1", "kind": "Model",
            "metadata": {"name": name, "namespace": "demo"},
            "spec": {"modelFormat": {"name": "simple-string"},
                     "storage": {"uri": "builtin://simple-string"}},
        })
    env = {"MESHLET_CLUSTER_KEYS": '["test-cluster-key-0123456789abcdef"]',
           "MESHLET_PEER_HOST": "127.0.0.1", "MESHLET_KUBE_STATUS_INTERVAL_S": "0.2"}
    first = start_agent("--kube", "on", "--kubeconfig", str(apiserver.write_kubeconfig(
        tmp_path / "first.kubeconfig", token="first")), **env)
    second = start_agent("--peers", f"127.0.0.1:{first.info['peer_port']}",
                         "--kube", "on", "--kubeconfig",
                         str(apiserver.write_kubeconfig(tmp_path / "second.kubeconfig",
                                                        token="second")), **env)
    wait_for(lambda: all(apiserver.status("Model", "demo", n).get("state") == "Pending"
                         for n in names), 60, "every first status")
    writers: dict[str, set[str]] = {}
    for request in apiserver.patches():
        writers.setdefault(request.path.split("/")[-2], set()).add(request.token)
    assert all(len(tokens) == 1 for tokens in writers.values()), writers  # one writer each
    assert {t for tokens in writers.values() for t in tokens} == {"first", "second"}
    for agent in (first, second):  # both serve every resource (the registry is gossiped)
        client = triton.InferenceServerClient(agent.address)
        try:
            for name in names:
                check_sums(infer(client, name))
        finally:
            client.close()
    wait_for(lambda: all(apiserver.status("Model", "demo", n).get("state") == "Loaded"
                         for n in names), 60, "Loaded, copies seen cluster-wide")
