"""`nslab sandbox up N --tls` for real (issue 20, item 2's last sentence): etcd with TLS
client certificates (--client-cert-auth, a CA made with openssl) and the agents' channel
over mutual TLS, the host reaching both through the sandbox's 127.0.0.1 forwarders.

One sandbox of two machines for the module; a second CA, made here, stands for a client
of another cluster.  Every refusal is checked as the user sees it: one sentence naming the
endpoint (etcd) or the agent, and nothing served.
"""
from __future__ import annotations

import json
import os
import socket
import ssl
import stat
import subprocess

import pytest

from conftest import REPO, nslab, unique_lab_name
from test_sandbox import docker_exec, started_sandbox

pytestmark = pytest.mark.root

SPLIT = str(REPO / "tests" / "golden" / "placement" / "segment-split.yaml")    # lan on m1, h3 on m2


class TLSSandbox:
    def __init__(self, name: str, port: int, exports: dict[str, str]):
        self.name, self.port, self.env = name, port, exports

    def nslab(self, *args, env=None, **kw):
        return nslab(*args, env={**self.env, **(env or {})}, **kw)

    def without(self, *names: str) -> dict[str, str]:
        """The environment with these variables emptied (as if unset: nslab reads '' as none)."""
        return {n: "" for n in names}


def one_sentence(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nslab: "), proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def box():
    with started_sandbox(2, "--tls", start=24400) as (name, port, printed):
        exports = dict(line[len("export "):].split("=", 1) for line in printed.splitlines()
                       if line.startswith("export "))
        yield TLSSandbox(name, port, exports)


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory):
    """A CA of another cluster and a client certificate from it."""
    d = tmp_path_factory.mktemp("other-ca")

    def openssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", "ca.key", "-out", "ca.crt", "-days", "1", "-subj", "/CN=another cluster")
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", "client.key", "-out", "client.csr", "-subj", "/CN=intruder")
    openssl("x509", "-req", "-in", "client.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-set_serial", "7",
            "-days", "1", "-out", "client.crt")
    return d


def test_up_prints_the_four_exports_and_keeps_the_keys_root_only(box):
    assert box.env["NSLAB_ETCD"] == f"https://127.0.0.1:{box.port}"
    tls = f"/run/nslab-sandbox/{box.name}/tls"
    assert box.env["NSLAB_ETCD_CA"] == f"{tls}/ca.crt"
    assert (box.env["NSLAB_ETCD_CERT"], box.env["NSLAB_ETCD_KEY"]) == (f"{tls}/host.crt", f"{tls}/host.key")
    assert stat.S_IMODE(os.stat(tls).st_mode) == 0o700
    for key in ("ca.key", "etcd.key", "host.key", "m1/key.pem", "m2/key.pem"):
        assert stat.S_IMODE(os.stat(f"{tls}/{key}").st_mode) == 0o600, key
    # each machine has its own certificate, read-only, and never the CA's key
    listed = docker_exec(f"{box.name}.m1", "ls", "/etc/nslab/tls").stdout.split()
    assert listed == ["ca.crt", "cert.pem", "key.pem"]
    assert docker_exec(f"{box.name}.m1", "touch", "/etc/nslab/tls/x").returncode != 0
    sans = subprocess.run(["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in", f"{tls}/m2/cert.pem"],
                          capture_output=True, text=True, check=True).stdout
    assert "IP Address:198.18.1.2" in sans and "IP Address:127.0.0.1" in sans


def test_machines_works_with_the_exported_variables(box):
    rows = json.loads(box.nslab("machines", "--json", check=True).stdout)
    assert [(r["machine"], r["address"]) for r in rows] == [("m1", "198.18.1.1"), ("m2", "198.18.1.2")]
    # the options in place of the variables
    files = box.without("NSLAB_ETCD_CA", "NSLAB_ETCD_CERT", "NSLAB_ETCD_KEY")
    by_options = box.nslab("machines", "--json", "--etcd-ca", box.env["NSLAB_ETCD_CA"], "--etcd-cert",
                           box.env["NSLAB_ETCD_CERT"], "--etcd-key", box.env["NSLAB_ETCD_KEY"], env=files)
    assert by_options.returncode == 0, by_options.stderr
    assert [r["machine"] for r in json.loads(by_options.stdout)] == ["m1", "m2"]


def test_etcd_refuses_a_client_without_a_certificate_or_with_another_cas(box, other_ca):
    endpoint = box.env["NSLAB_ETCD"]
    bare = box.nslab("machines", env=box.without("NSLAB_ETCD_CERT", "NSLAB_ETCD_KEY"))
    assert bare.returncode == 1 and not bare.stdout
    assert one_sentence(bare) == (f"nslab: etcd at {endpoint} refused the TLS connection: it wants a client "
                                  f"certificate (--etcd-cert/--etcd-key or $NSLAB_ETCD_CERT/_KEY)")
    foreign = box.nslab("machines", env={"NSLAB_ETCD_CERT": str(other_ca / "client.crt"),
                                         "NSLAB_ETCD_KEY": str(other_ca / "client.key")})
    assert foreign.returncode == 1 and not foreign.stdout
    sentence = one_sentence(foreign)
    assert sentence.startswith(f"nslab: etcd at {endpoint} refused the client certificate "
                               f"{other_ca / 'client.crt'} (") and sentence.endswith("is it from etcd's CA?")
    # etcd's own certificate checked against the CA given: another CA's refuses it
    wrong_ca = box.nslab("machines", env={"NSLAB_ETCD_CA": str(other_ca / "ca.crt")})
    assert wrong_ca.returncode == 1
    assert one_sentence(wrong_ca).startswith(f"nslab: etcd at {endpoint} shows a certificate not from the CA "
                                             f"in {other_ca / 'ca.crt'}")
    # plain HTTP to the HTTPS port
    plain = box.nslab("machines", env={"NSLAB_ETCD": f"http://127.0.0.1:{box.port}",
                                       **box.without("NSLAB_ETCD_CA", "NSLAB_ETCD_CERT", "NSLAB_ETCD_KEY")})
    assert plain.returncode == 1
    assert f"if it serves HTTPS: https://127.0.0.1:{box.port}" in one_sentence(plain)
    # a file that is not there: the option named, exit 2
    missing = box.nslab("machines", "--etcd-cert", "/nonexistent/cert.pem")
    assert missing.returncode == 2
    assert one_sentence(missing) == "nslab: --etcd-cert /nonexistent/cert.pem: no such file or directory"


def _request(port: int, context: ssl.SSLContext | None, token: str | None) -> bytes:
    """GET /v1/labs on m1's agent through the forwarder; whatever comes back (b'' if the
    connection ends without an answer)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        if context is not None:
            sock = context.wrap_socket(sock, server_hostname="127.0.0.1")
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        sock.sendall(f"GET /v1/labs HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        return data
    finally:
        sock.close()


def test_the_agents_channel_refuses_a_client_without_a_certificate_and_serves_one_with_it(box, other_ca):
    from nslab import coord
    creds = coord.Credentials(box.env["NSLAB_ETCD_CA"], box.env["NSLAB_ETCD_CERT"], box.env["NSLAB_ETCD_KEY"])
    token = coord.cluster_token(coord.Etcd(box.env["NSLAB_ETCD"], coord.TIMEOUT, creds.ca, creds.cert, creds.key))
    agent = box.port + 1
    # plain HTTP, even with the token: no TLS handshake, no answer
    assert _request(agent, None, token) == b""
    # TLS without a client certificate, and with one from another CA: refused in the handshake
    no_cert = ssl.create_default_context(cafile=creds.ca)
    foreign = ssl.create_default_context(cafile=creds.ca)
    foreign.load_cert_chain(str(other_ca / "client.crt"), str(other_ca / "client.key"))
    for context in (no_cert, foreign):
        try:
            answer = _request(agent, context, token)
        except (ssl.SSLError, ConnectionError) as e:        # TLS 1.3: the refusal shows on the first read
            answer = repr(e).encode()
        assert not answer.startswith(b"HTTP/"), answer
    # the cluster's certificate: served, and the token still required
    mutual = creds.client_context()
    assert _request(agent, mutual, None).startswith(b"HTTP/1.0 401")
    answer = _request(agent, mutual, token)
    assert answer.startswith(b"HTTP/1.0 200") and b'"machine": "m1"' in answer


def test_the_host_with_another_cas_certificate_is_refused_by_the_agent_in_one_sentence(box, other_ca, monkeypatch):
    """channel.run's side: etcd let through (the token read with the cluster's files), the
    agent's channel dialled with another CA's certificate."""
    from nslab import channel, coord
    from nslab.errors import NslabError
    etcd = coord.Etcd(box.env["NSLAB_ETCD"], coord.TIMEOUT, box.env["NSLAB_ETCD_CA"], box.env["NSLAB_ETCD_CERT"],
                      box.env["NSLAB_ETCD_KEY"])
    token = coord.cluster_token(etcd)
    monkeypatch.setenv("NSLAB_ETCD_CA", box.env["NSLAB_ETCD_CA"])
    monkeypatch.setenv("NSLAB_ETCD_CERT", str(other_ca / "client.crt"))
    monkeypatch.setenv("NSLAB_ETCD_KEY", str(other_ca / "client.key"))
    with pytest.raises(NslabError) as e:
        channel.run(f"http://127.0.0.1:{box.port + 1}", token, {"lab": "nolab", "command": "show"})
    assert str(e.value).startswith(f"the agent at https://127.0.0.1:{box.port + 1} refused the TLS connection (")
    assert str(e.value).endswith("is this side's certificate ($NSLAB_ETCD_CERT) from the cluster's CA?")
    # the agent's certificate checked against the CA: another CA's refuses it
    monkeypatch.setenv("NSLAB_ETCD_CA", str(other_ca / "ca.crt"))
    with pytest.raises(NslabError) as e:
        channel.run(f"http://127.0.0.1:{box.port + 1}", token, {"lab": "nolab", "command": "show"})
    assert str(e.value).startswith(f"the agent at https://127.0.0.1:{box.port + 1} shows a certificate not from")


def test_a_lab_across_two_machines_up_and_down_over_tls(box, other_ca):
    lab = unique_lab_name()
    up = box.nslab("up", SPLIT, "--name", lab, timeout=240)
    try:
        assert up.returncode == 0, up.stderr
        assert f"lab {lab} is up over 2 machines:" in up.stdout
        # h3 (m2) to h1 (m1) across the stitch, asked through m2's agent over mutual TLS
        ping = box.nslab("exec", "-l", lab, "h3", "--", "ping", "-c", "1", "-W", "5", "192.0.2.1", timeout=60)
        assert ping.returncode == 0, ping.stdout + ping.stderr
        assert "1 received" in ping.stdout
        # input and output at once on one TLS connection: 1 MB through cat and back
        data = "".join(f"{i:07d}\n" for i in range(131072))
        echoed = box.nslab("exec", "-l", lab, "h3", "--", "cat", input=data, timeout=120)
        assert echoed.returncode == 0 and echoed.stdout == data, (len(echoed.stdout), echoed.stderr)
        shown = box.nslab("show", "-l", lab, "--brief", timeout=60)
        assert shown.returncode == 0 and "machine m2:" in shown.stdout, shown.stderr
        # the host with another CA's certificate: etcd refuses it before any agent is asked
        foreign = box.nslab("exec", "-l", lab, "h3", "--", "true",
                            env={"NSLAB_ETCD_CERT": str(other_ca / "client.crt"),
                                 "NSLAB_ETCD_KEY": str(other_ca / "client.key")})
        assert foreign.returncode == 1 and "refused the client certificate" in one_sentence(foreign)
    finally:
        down = box.nslab("down", lab, timeout=240)
    assert down.returncode == 0, down.stderr
    assert f"lab {lab} removed from 2 machines (m1, m2)" in down.stdout
    for m in ("m1", "m2"):
        left = [n for n in docker_exec(f"{box.name}.{m}", "ip", "netns").stdout.split() if n.startswith(lab)]
        assert left == [], (m, left)


def test_tls_files_that_do_not_fit_are_refused_naming_the_option(other_ca):
    """No etcd is asked: the files are checked first (exit 2, one sentence, the option or
    the variable named)."""
    endpoint = "https://127.0.0.1:1"
    mismatch = nslab("machines", "--etcd", endpoint, "--etcd-cert", other_ca / "client.crt",
                     "--etcd-key", other_ca / "ca.key")
    assert mismatch.returncode == 2
    assert one_sentence(mismatch).startswith(f"nslab: --etcd-cert {other_ca / 'client.crt'}: not a certificate "
                                             f"and key that match (")
    lone_key = nslab("machines", "--etcd", endpoint, env={"NSLAB_ETCD_KEY": str(other_ca / "client.key")})
    assert lone_key.returncode == 2
    assert one_sentence(lone_key) == ("nslab: $NSLAB_ETCD_KEY without a certificate: give --etcd-cert "
                                      "(or $NSLAB_ETCD_CERT) too")
    not_ca = nslab("machines", "--etcd", endpoint, "--etcd-ca", other_ca / "client.key")
    assert not_ca.returncode == 2
    assert one_sentence(not_ca).startswith(f"nslab: --etcd-ca {other_ca / 'client.key'}: not a CA certificate")
    plain = nslab("agent", "--etcd", "http://127.0.0.1:1", "--machine", "m9", "--etcd-ca", other_ca / "ca.crt")
    assert plain.returncode == 2
    assert "is plain HTTP but TLS files are given" in one_sentence(plain)
