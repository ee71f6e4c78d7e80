"""The pod's managed /etc/hosts, byte for byte as kubelet's managedHostsFileContent writes it."""

from __future__ import annotations

from provider.pod_etc import etc_hosts

HEADER = (
    "# Kubernetes-managed hosts file.\n"
    "127.0.0.1\tlocalhost\n"
    "::1\tlocalhost ip6-localhost ip6-loopback\n"
    "fe00::0\tip6-localnet\n"
    "fe00::0\tip6-mcastprefix\n"
    "fe00::1\tip6-allnodes\n"
    "fe00::2\tip6-allrouters\n"
)


def test_host_aliases_have_one_header_and_a_line_per_ip() -> None:
    aliases = [{"ip": "123.45.67.89", "hostnames": ["foo", "bar"]}, {"ip": "10.0.0.1", "hostnames": ["baz"]}]
    assert etc_hosts("web-0", "10.1.2.3", aliases) == HEADER + (
        "10.1.2.3\tweb-0\n\n# Entries added by HostAliases.\n123.45.67.89\tfoo\tbar\n10.0.0.1\tbaz\n"
    )


def test_a_pod_with_a_domain_maps_its_ip_to_the_fqdn_and_the_short_name() -> None:
    assert etc_hosts("h", "10.1.2.3", (), "sub.ns.svc.cluster.local") == HEADER + (
        "10.1.2.3\th.sub.ns.svc.cluster.local\th\n"
    )
    assert etc_hosts("h", "10.1.2.3") == HEADER + "10.1.2.3\th\n"
