"""What each kind's status says, from an observation (pure)."""

from __future__ import annotations

from agent.kube.status import (
    Copies,
    Observed,
    Problem,
    digest,
    inference_service_status,
    model_status,
    predictor_status,
    ready_of,
)

NOW = 1_800_000_000.0
LOADED = Copies("m__1", "LOADED", loaded=2)
STANDBY = Copies("m__1", "NOT_LOADED")


def observed(**kw: object) -> Observed:
    base: dict[str, object] = {"generation": 3, "vmodel": "DEFINED", "node": "10.0.0.1:8034",
                               "now": NOW}
    return Observed(**{**base, **kw})  # type: ignore[arg-type]


def test_model_loaded_counts_copies_and_is_ready() -> None:
    status = model_status(observed(active=LOADED))
    assert status["state"] == "Loaded"
    assert (status["copies"], status["failedCopies"], status["lastFailure"]) == (2, 0, None)
    assert status["observedGeneration"] == 3
    (ready,) = status["conditions"]
    assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "True", "Loaded")
    assert ready["lastTransitionTime"] == "2027-01-15T08:00:00Z"


def test_model_registered_but_not_loaded_is_pending_and_ready() -> None:
    status = model_status(observed(active=STANDBY))
    assert status["state"] == "Pending"
    assert status["conditions"][0]["status"] == "True"
    assert "loads on its first request" in status["conditions"][0]["message"]


def test_model_not_registered_yet_is_pending_and_not_ready() -> None:
    status = model_status(observed(vmodel="NOT_FOUND"))
    assert (status["state"], status["conditions"][0]["status"]) == ("Pending", "False")


def test_model_moving_to_a_new_spec_reports_the_target_and_stays_ready() -> None:
    target = Copies("m__2", "LOADING", loading=1)
    status = model_status(observed(vmodel="TRANSITIONING", active=LOADED, target=target))
    assert status["state"] == "Loading"
    assert status["conditions"][0]["status"] == "True"
    assert "moving to m__2" in status["conditions"][0]["message"]


def test_model_failed_target_reports_the_failure() -> None:
    target = Copies("m__2", "LOADING_FAILED", failed=1, failure="bad file",
                    failure_location="10.0.0.2:8034", failure_time=NOW - 60)
    status = model_status(observed(vmodel="TRANSITION_FAILED", active=LOADED, target=target))
    assert status["state"] == "FailedToLoad"
    assert status["failedCopies"] == 1
    assert status["lastFailure"] == {"reason": "ModelLoadFailed", "message": "bad file",
                                     "node": "10.0.0.2:8034", "time": "2027-01-15T07:59:00Z"}
    assert status["conditions"][0]["status"] == "True"  # the old spec still serves


def test_model_invalid_spec_names_the_field_and_keeps_serving() -> None:
    problem = Problem("InvalidSpec", "spec.storage.uri: scheme 'ftp' is not supported")
    status = model_status(observed(active=LOADED, problem=problem))
    assert status["state"] == "InvalidSpec"
    assert status["lastFailure"]["message"] == problem.message
    assert status["conditions"][0]["status"] == "True"
    assert "previous spec is still served" in status["conditions"][0]["message"]
    fresh = model_status(observed(vmodel="NOT_FOUND", problem=problem))
    assert fresh["conditions"][0]["status"] == "False"


def test_model_name_conflict_fails() -> None:
    problem = Problem("NameConflict", "name 'a' is already served for Model x/a")
    status = model_status(observed(problem=problem, active=LOADED))
    assert (status["state"], status["copies"]) == ("FailedToLoad", 0)
    assert status["conditions"][0]["reason"] == "NameConflict"
    assert status["lastFailure"]["reason"] == "NameConflict"


def test_predictor_in_modelmesh_shape() -> None:
    assert predictor_status(observed(active=STANDBY)) == {
        "available": True, "activeModelState": "Standby", "targetModelState": "",
        "transitionStatus": "UpToDate", "totalCopies": 0, "failedCopies": 0,
        "lastFailureInfo": None,
    }
    target = Copies("m__2", "LOADING_FAILED", failed=1, failure="boom",
                    failure_location="n2", failure_time=NOW)
    moving = predictor_status(observed(vmodel="TRANSITION_FAILED", active=LOADED, target=target))
    assert (moving["activeModelState"], moving["targetModelState"]) == ("Loaded", "FailedToLoad")
    assert moving["transitionStatus"] == "BlockedByFailedLoad"
    assert (moving["totalCopies"], moving["failedCopies"]) == (2, 1)
    assert moving["lastFailureInfo"] == {"reason": "ModelLoadFailed", "message": "boom",
                                         "modelId": "m__2", "location": "n2",
                                         "time": "2027-01-15T08:00:00Z"}
    invalid = predictor_status(observed(vmodel="NOT_FOUND",
                                        problem=Problem("RuntimeNotRecognized", "x")))
    assert (invalid["transitionStatus"], invalid["available"]) == ("InvalidSpec", False)
    assert invalid["lastFailureInfo"]["reason"] == "RuntimeNotRecognized"


def test_inference_service_in_modelmesh_shape() -> None:
    status = inference_service_status(observed(active=LOADED))
    assert status["modelStatus"] == {
        "states": {"activeModelState": "Loaded", "targetModelState": ""},
        "transitionStatus": "UpToDate", "copies": {"totalCopies": 2, "failedCopies": 0},
        "lastFailureInfo": None,
    }
    assert status["conditions"][0]["type"] == "Ready"
    assert status["conditions"][0]["status"] == "True"


def test_ready_since_is_kept_while_ready_does_not_change() -> None:
    before = 1_767_225_600  # 2026-01-01T00:00:00Z
    kept = model_status(observed(active=LOADED, ready_before=True, ready_since=before))
    assert kept["conditions"][0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    flipped = model_status(observed(active=Copies("m__1", "LOADING_FAILED", failed=1),
                                    ready_before=True, ready_since=before))
    assert flipped["conditions"][0]["lastTransitionTime"] == "2027-01-15T08:00:00Z"
    assert ready_of(kept) == (True, before)


def test_digest_ignores_times_nulls_and_keys_not_ours() -> None:
    status = model_status(observed(active=LOADED))
    later = model_status(observed(active=LOADED, now=NOW + 3600))
    keys = frozenset(status)
    assert digest(status, keys) == digest(later, keys)
    stored = {k: v for k, v in status.items() if v is not None}  # a merge patch drops nulls
    stored["somethingElse"] = {"written": "by another controller"}
    assert digest(stored, keys) == digest(status, keys)
    assert digest(model_status(observed(active=STANDBY)), keys) != digest(status, keys)
