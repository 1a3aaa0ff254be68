"""The watcher against a server that speaks the protocol, with the real client:
list in pages then watch, bookmarks, resume after a cut, re-list after 410,
backoff and Retry-After, the API server gone for a while, and stopping."""

from __future__ import annotations

import time
from collections.abc import Callable

from agent.kube.watcher import Watcher
from tests.agent.kube.apiserver import FakeApiServer, Fault
from tests.agent.kube.conftest import KubeNode, model, started, until


def watcher(node: KubeNode) -> Watcher:
    (w,) = node.kube.watchers
    return w


async def test_lists_in_pages_then_watches_from_the_lists_version(
    apiserver: FakeApiServer, make_node: Callable[..., KubeNode]
) -> None:
    for i in range(5):
        apiserver.create(model(f"m{i}", namespace=f"ns{i % 2}"))
    version = apiserver.resource_version
    node = await started(make_node, list_page_size=2)
    lists = apiserver.lists("models")
    assert len(lists) == 3  # 2 + 2 + 1, each after the first with the previous continue token
    assert "continue" not in lists[0].query and all("continue" in r.query for r in lists[1:])
    assert {n: node.target(n) is not None for n in (f"m{i}" for i in range(5))} == {
        f"m{i}": True for i in range(5)}
    await until(lambda: apiserver.watches("models"), what="a watch")
    watch = apiserver.watches("models")[0]
    assert watch.query["resourceVersion"] == str(version)
    assert watch.query["allowWatchBookmarks"] == "true"
    apiserver.create(model("m5"))
    await until(lambda: node.target("m5"), what="m5 from the watch")
    assert len(apiserver.lists("models")) == 3  # no list again


async def test_bookmarks_and_a_cut_connection_resume_from_the_last_version(
    apiserver: FakeApiServer, make_node: Callable[..., KubeNode]
) -> None:
    apiserver.create(model("a"))
    node = await started(make_node)
    w = watcher(node)
    await until(lambda: apiserver.watches("models"), what="a watch")
    apiserver.create({**model("p"), "kind": "Predictor",
                      "apiVersion": "serving.kserve.io/v1alpha1"})  # moves the version on
    apiserver.bookmark()
    await until(lambda: w.resource_version == str(apiserver.resource_version), what="bookmark")
    bookmarked = w.resource_version
    apiserver.cut_watches()  # half an event, then the connection is reset
    await until(lambda: len(apiserver.watches("models")) == 2, what="the watch again")
    assert apiserver.watches("models")[1].query["resourceVersion"] == bookmarked
    apiserver.create(model("b"))
    await until(lambda: node.target("b"), what="b after the resume")
    assert w.failures >= 1
    assert len(apiserver.lists("models")) == 1  # resumed, not listed again


async def test_in_band_410_lists_again_and_catches_up_with_deletions(
    apiserver: FakeApiServer, make_node: Callable[..., KubeNode]
) -> None:
    apiserver.create(model("kept"))
    apiserver.create(model("deleted"))
    node = await started(make_node)
    await until(lambda: apiserver.watches("models"), what="a watch")
    assert node.target("deleted")
    apiserver.down()  # while the agent cannot see: one deleted, one added, history compacted
    apiserver.delete("Model", "default", "deleted")
    apiserver.create(model("added"))
    apiserver.compact()
    apiserver.up()
    await until(lambda: node.target("added") and node.target("deleted") is None,
                what="catching up by a new list")
    assert node.target("kept")
    assert len(apiserver.lists("models")) == 2
    resumed = apiserver.watches("models")
    assert any(r.query["resourceVersion"] != resumed[0].query["resourceVersion"]
               for r in resumed[1:])  # watching again from the new list's version


async def test_http_410_when_a_watch_starts_lists_again(
    apiserver: FakeApiServer, make_node: Callable[..., KubeNode]
) -> None:
    apiserver.create(model("a"))
    await started(make_node)
    await until(lambda: apiserver.watches("models"), what="a watch")
    apiserver.faults.append(Fault("GET", lambda r: r.watch, 410))
    apiserver.cut_watches()
    await until(lambda: len(apiserver.lists("models")) == 2, what="a second list")


async def test_an_expired_continue_token_restarts_the_list(
    apiserver: FakeApiServer, make_node: Callable[..., KubeNode]
) -> None:
    for i in range(5):
        apiserver.create(model(f"m{i}"))
    apiserver.faults.append(Fault("GET", lambda r: "continue" in r.query, 410))
    node = await started(make_node, list_page_size=2)
    assert all(node.target(f"m{i}") for i in range(5))
    assert len(apiserver.lists("models")) == 1 + 1 + 3  # page, expired, then 3 pages


async def test_the_api_server_gone_for_a_while(
    apiserver: FakeApiServer, make_node: Callable[..., KubeNode]
) -> None:
    apiserver.create(model("a"))
    node = await started(make_node, backoff_initial_s=0.05, backoff_max_s=0.2)
    await until(lambda: apiserver.status("Model", "default", "a").get("state") == "Pending",
                what="first status")
    w = watcher(node)
    apiserver.down()
    failures = w.failures
    await until(lambda: w.failures >= failures + 3, what="failed attempts")
    # meanwhile the agent serves from its registry
    assert await node.infer("a")
    apiserver.create(model("b"))  # made while the agent cannot see
    apiserver.up()
    await until(lambda: node.target("b"), what="catching up")
    # the load during the outage reaches the status once the server is back
    await until(lambda: apiserver.status("Model", "default", "a").get("state") == "Loaded",
                what="status written after the outage")
    assert len(apiserver.lists("models")) == 1  # the history was kept: resumed, not listed


async def test_429_on_a_watch_waits_for_retry_after(
    apiserver: FakeApiServer, make_node: Callable[..., KubeNode]
) -> None:
    await started(make_node, backoff_initial_s=0.05)
    await until(lambda: apiserver.watches("models"), what="a watch")
    apiserver.faults.append(Fault("GET", lambda r: r.watch, 429, {"Retry-After": "1"}))
    apiserver.cut_watches()
    await until(lambda: len(apiserver.watches("models")) >= 3, what="watching again")
    refused, retried = apiserver.watches("models")[1:3]
    assert retried.at - refused.at >= 1.0


async def test_steady_state_makes_watch_requests_only(
    apiserver: FakeApiServer, make_node: Callable[..., KubeNode]
) -> None:
    for i in range(3):
        apiserver.create(model(f"m{i}"))
    node = await started(make_node, watch_timeout_s=1.0)
    await until(lambda: all(apiserver.status("Model", "default", f"m{i}") for i in range(3)),
                what="first statuses")
    w = watcher(node)  # the status writes' own MODIFIED events handled:
    await until(lambda: w.resource_version == str(apiserver.resource_version), what="in step")
    before = len(apiserver.requests)
    start = time.monotonic()
    await until(lambda: len(apiserver.watches("models")) >= 4, timeout_s=30, what="re-watches")
    window = apiserver.requests[before:]
    elapsed = time.monotonic() - start
    assert {r.method for r in window} == {"GET"}
    assert all(r.watch for r in window), [r.path for r in window if not r.watch]
    # each watch lasts the timeout to twice that; one request per watch, nothing else
    assert len(window) <= elapsed / node.settings.watch_timeout_s + 1


async def test_namespaces_are_watched_one_by_one(
    apiserver: FakeApiServer, make_node: Callable[..., KubeNode]
) -> None:
    for ns in ("a", "b", "c"):
        apiserver.create(model(f"in-{ns}", namespace=ns))
    node = await started(make_node, namespaces=("a", "b"))
    assert [w.namespace for w in node.kube.watchers] == ["a", "b"]
    assert node.target("in-a") and node.target("in-b") and node.target("in-c") is None
    paths = {r.path for r in apiserver.lists("models")}
    assert paths == {"/apis/meshlet.io/v1alpha1/namespaces/a/models",
                     "/apis/meshlet.io/v1alpha1/namespaces/b/models"}


async def test_stop_ends_a_blocked_watch_at_once(
    apiserver: FakeApiServer, make_node: Callable[..., KubeNode]
) -> None:
    node = await started(make_node, watch_timeout_s=600.0)
    await until(lambda: apiserver.watches("models"), what="a watch")
    thread = watcher(node)._thread
    assert thread is not None
    started_at = time.monotonic()
    await node.kube.stop()
    assert time.monotonic() - started_at < 2.0
    assert not thread.is_alive()
