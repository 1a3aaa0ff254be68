"""``meshlet cluster``'s table, from a members message."""

from __future__ import annotations

from agent.cli.cluster import render
from agent.proto import meshlet_pb2 as pb


def test_members_are_counted_in_the_singular_and_the_plural() -> None:
    response = pb.MembersResponse()
    response.members.add(address="10.0.0.1:8034", state="ALIVE", models=3, self=True)
    assert render(response)[-1] == "1 member, 1 alive"
    response.members.add(address="10.0.0.2:8034", state="DEAD")
    assert render(response)[-1] == "2 members, 1 alive"
