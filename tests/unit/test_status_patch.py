"""The status patch body replaces IP lists instead of merging them (a recreated sandbox's new IP)."""

from provider.pods.worker import replace_ip_lists


def test_ip_lists_carry_a_replace_directive() -> None:
    status = {
        "phase": "Running",
        "podIP": "10.0.0.2",
        "podIPs": [{"ip": "10.0.0.2"}],
        "hostIPs": [{"ip": "1.2.3.4"}],
    }
    body = replace_ip_lists(status)
    assert body["podIPs"] == [{"ip": "10.0.0.2"}, {"$patch": "replace"}]
    assert body["hostIPs"] == [{"ip": "1.2.3.4"}, {"$patch": "replace"}]
    assert status["podIPs"] == [{"ip": "10.0.0.2"}]  # the recorded status is untouched


def test_no_ip_lists_no_directive() -> None:
    assert replace_ip_lists({"phase": "Pending"}) == {"phase": "Pending"}
