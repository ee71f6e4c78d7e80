"""Image pull records (KEP-2535): the pure decision and its persistence across restarts."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from sandbox.pull_records import PullRecords, RepoRecord, must_verify

REPO = "reg.io/private/app"


def test_preloaded_images_are_never_verified() -> None:
    assert must_verify(None, REPO, []) is False


def test_an_image_pulled_as_another_repository_must_be_verified() -> None:
    assert must_verify({"reg.io/public/app": RepoRecord(anonymous=True)}, REPO, []) is True


def test_anonymous_pull_makes_the_image_node_accessible() -> None:
    assert must_verify({REPO: RepoRecord(anonymous=True)}, REPO, []) is False


def test_credential_pulled_image_needs_a_matching_fingerprint() -> None:
    recs = {REPO: RepoRecord(fingerprints={"f1", "f2"})}
    assert must_verify(recs, REPO, []) is True
    assert must_verify(recs, REPO, ["other"]) is True
    assert must_verify(recs, REPO, ["other", "f2"]) is False


@given(st.sets(st.text(min_size=1, max_size=4)), st.sets(st.text(min_size=1, max_size=4)), st.booleans())
def test_verification_is_needed_exactly_without_anonymous_or_shared_fingerprint(
    recorded: set[str], held: set[str], anonymous: bool
) -> None:
    recs = {REPO: RepoRecord(anonymous=anonymous, fingerprints=set(recorded))}
    assert must_verify(recs, REPO, held) == (not anonymous and not (recorded & held))


def test_records_survive_a_restart_and_forget_removed_images(tmp_path: Path) -> None:
    path = tmp_path / "state" / "records.json"
    recs = PullRecords(path)
    recs.record("sha256:1", REPO, "f1")
    recs.record("sha256:1", REPO, "f1")  # idempotent
    recs.record("sha256:1", "reg.io/public/app", None)
    recs.record("sha256:2", REPO, "f2")
    again = PullRecords(path)
    one = again.get("sha256:1")
    assert one is not None
    assert one[REPO].fingerprints == {"f1"} and not one[REPO].anonymous
    assert one["reg.io/public/app"].anonymous
    again.forget(["sha256:1"])
    assert PullRecords(path).get("sha256:1") is None
    assert PullRecords(path).get("sha256:2") is not None


def test_unreadable_records_count_as_none(tmp_path: Path) -> None:
    path = tmp_path / "records.json"
    path.write_text("{broken")
    assert PullRecords(path).get("sha256:1") is None
    assert PullRecords(None).get("x") is None
