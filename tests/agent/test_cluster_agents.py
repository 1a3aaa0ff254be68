"""Real agents on loopback forming a cluster over their peer ports: they find
each other from one seed, see a SIGKILLed member die and a stopped one leave,
and refuse a node with the wrong key."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

from agent.process import AgentProcess
from tests.conftest import wait_for

StartAgent = Callable[..., AgentProcess]
KEY = "test-cluster-key-0123456789abcdef"


def members(agent: AgentProcess) -> dict[str, str]:
    """Peer address -> state, as ``meshlet cluster`` prints them."""
    result = subprocess.run(
        [sys.executable, "-m", "agent.cli.main", "cluster", "--address", agent.address],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    rows = [line[2:].split() for line in result.stdout.splitlines()[1:-1]
            if line[:2] in ("* ", "  ") and ":" in line]
    return {row[0]: row[1] for row in rows if len(row) >= 2}


def peer(agent: AgentProcess) -> str:
    return f"127.0.0.1:{agent.info['peer_port']}"


def test_agents_form_a_cluster_and_see_failures(start_agent: StartAgent) -> None:
    env = {"MESHLET_CLUSTER_KEYS": f'["{KEY}"]', "MESHLET_PEER_HOST": "127.0.0.1"}
    first = start_agent(**env)
    assert first.info["peer_port"] > 0
    others = [start_agent("--peers", peer(first), **env) for _ in range(2)]
    everyone = {peer(a) for a in (first, *others)}
    for agent in (first, *others):
        wait_for(lambda a=agent: members(a) == dict.fromkeys(everyone, "ALIVE"),
                 timeout_s=30, what=f"{peer(agent)} sees all three alive")

    killed = others[0]
    killed.kill()
    wait_for(lambda: members(first).get(peer(killed)) == "DEAD", timeout_s=30,
             what="the SIGKILLed member declared dead")

    others[1].stop()  # SIGTERM: a graceful leave
    wait_for(lambda: members(first).get(peer(others[1])) == "LEFT", timeout_s=30,
             what="the stopped member seen as left")

    stranger = start_agent("--peers", peer(first), MESHLET_PEER_HOST="127.0.0.1",
                           MESHLET_CLUSTER_KEYS='["some-other-key-fedcba9876543210"]')
    wait_for(lambda: "dropped peer messages: unknown_key" in subprocess.run(
        [sys.executable, "-m", "agent.cli.main", "cluster", "--address", first.address],
        capture_output=True, text=True, timeout=60).stdout,
        timeout_s=30, what="the stranger's messages dropped")
    assert peer(stranger) not in members(first)
    assert set(members(stranger)) == {peer(stranger)}


def test_no_keys_no_cluster(start_agent: StartAgent) -> None:
    agent = start_agent()
    assert agent.info["peer_port"] == 0
    result = subprocess.run(
        [sys.executable, "-m", "agent.cli.main", "cluster", "--address", agent.address],
        capture_output=True, text=True, timeout=60,
    )
    assert "runs alone" in result.stdout
