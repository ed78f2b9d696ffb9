"""Starts real logkvd processes on loopback for the client tests.

Ports are chosen by logkvd itself (--listen=127.0.0.1:0): the test reads the
"listening on" lines it prints. Every wait is bounded, and every process is
stopped (SIGTERM, then SIGKILL) by stop() or at interpreter exit.
"""
import atexit
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request

LOGKVD = os.environ.get("LOGKVD", "logkvd")
_LIVE = set()
_LISTEN = re.compile(r"listening on ([0-9.]+):(\d+) \((binary|HTTP)")


class Server:
    """One logkvd: .port (binary protocol), .http_port, .address ("127.0.0.1:port")."""

    def __init__(self, *flags, data_dir=None, port=0, node_id=None, seeds=None,
                 timeout=30.0):
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="logkv-pytest-")
        self._own_dir = data_dir is None
        self.flags = list(flags)
        self.node_id = node_id
        self.seeds = seeds
        self.process = None
        self.start(port, timeout)

    def start(self, port=0, timeout=30.0):
        args = [LOGKVD, "--data-dir=" + self.data_dir, "--listen=127.0.0.1:%d" % port,
                "--http=127.0.0.1:0", "--threads=1", "--shards=2", "--log-level=info"]
        if self.node_id:
            args += ["--node-id=" + self.node_id, "--cluster-secret=client-tests",
                     "--gossip-interval-ms=100"]
            if port:
                args.append("--advertise=127.0.0.1:%d" % port)
        if self.seeds:
            args.append("--seeds=" + ",".join(self.seeds))
        args += self.flags
        self.output = []
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, text=True)
        _LIVE.add(self)
        found = {}
        ready = threading.Event()

        def pump(process=self.process, output=self.output):
            try:
                for line in process.stdout:
                    output.append(line)
                    m = _LISTEN.search(line)
                    if m and m.group(3) not in found:
                        found[m.group(3)] = int(m.group(2))
                        if len(found) == 2:
                            ready.set()
            except (ValueError, OSError):
                pass  # closed by stop()
            ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(timeout) or len(found) < 2:
            self.stop()
            raise RuntimeError("logkvd did not start: %s" % "".join(self.output[-20:]))
        self.port, self.http_port = found["binary"], found["HTTP"]
        self.address = "127.0.0.1:%d" % self.port

    def stop(self, kill=False):
        process, self.process = self.process, None
        if process is None:
            return
        try:
            process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        process.stdout.close()
        _LIVE.discard(self)

    def restart(self, timeout=30.0):
        """Stops and starts again on the same port and data (retrying a taken port)."""
        port = self.port
        self.stop()
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.start(port, timeout)
                return
            except RuntimeError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.2)

    def close(self):
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def http(self, method, path, body=None, headers=None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request("http://127.0.0.1:%d%s" % (self.http_port, path),
                                         data=data, method=method,
                                         headers={"Content-Type": "application/json",
                                                  **(headers or {})})
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.loads(answer.read() or b"null")

    def protocol_requests(self, operation):
        """logkv_protocol_requests_total of an operation (all statuses), from /metrics."""
        url = "http://127.0.0.1:%d/metrics?format=prometheus" % self.http_port
        # With --auth=on the node's figures need the operator credential.
        request = urllib.request.Request(url, headers={"Authorization": "Bearer client-tests"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            text = answer.read().decode()
        total = 0
        pattern = re.compile(r'^logkv_protocol_requests_total\{([^}]*)\} (\S+)$', re.M)
        for labels, value in pattern.findall(text):
            if 'operation="%s"' % operation in labels:
                total += float(value)
        return int(total)

    def api_key(self, email="client@example.com", username="clienttest",
                password="client-test-pass-1"):
        """Signs up, logs in and creates an API key (a server with --auth=on)."""
        self.http("POST", "/signup", {"email": email, "username": username,
                                      "password": password})
        token = self.http("POST", "/login", {"email": email,
                                             "password": password})["access_token"]
        created = self.http("POST", "/apikeys", {"name": "tests", "scopes": ["read", "write"]},
                            {"Authorization": "Bearer " + token})
        return created["key"], token, created


class Cluster:
    """Three logkvd nodes n0..n2: n0 first, the others seeded through it."""

    def __init__(self, size=3, timeout=60.0, flags=()):
        self.nodes = []
        try:
            first = Server(*flags, node_id="n0")
            self.nodes.append(first)
            for i in range(1, size):
                self.nodes.append(Server(*flags, node_id="n%d" % i, seeds=[first.address]))
            self._wait_members(size, timeout)
        except BaseException:
            self.close()
            raise

    def _wait_members(self, size, timeout):
        deadline = time.monotonic() + timeout
        while True:
            ok = 0
            for node in self.nodes:
                try:
                    alive = [m for m in node.http("GET", "/nodes")
                             if m.get("state") == "alive"]
                    ok += len(alive) >= size
                except OSError:
                    pass
            if ok == size:
                return
            if time.monotonic() >= deadline:
                raise RuntimeError("the cluster did not form within %ss" % timeout)
            time.sleep(0.2)

    def close(self):
        for node in self.nodes:
            node.close()


class FakeServer:
    """A TCP server on loopback that answers every connection with handler(sock)."""

    def __init__(self, handler):
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port = self._listener.getsockname()[1]
        self.address = "127.0.0.1:%d" % self.port
        self._handler = handler
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        self._listener.settimeout(0.2)
        while not self._stop:
            try:
                sock, _ = self._listener.accept()
            except (socket.timeout, OSError):
                continue
            threading.Thread(target=self._run, args=(sock,), daemon=True).start()

    def _run(self, sock):
        try:
            sock.settimeout(10)
            self._handler(sock)
        except OSError:
            pass
        finally:
            sock.close()

    def close(self):
        self._stop = True
        self._thread.join(5)
        self._listener.close()


@atexit.register
def _stop_all():
    for server in list(_LIVE):
        server.stop(kill=True)


class TlsProxy:
    """A TLS-terminating proxy on loopback in front of a plaintext logkvd (TLS
    offloaded), with a self-signed certificate made by openssl: .address, .ca_file."""

    def __init__(self, target_port):
        import ssl
        self._dir = tempfile.mkdtemp(prefix="logkv-tls-")
        self.ca_file = os.path.join(self._dir, "cert.pem")
        key_file = os.path.join(self._dir, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", key_file, "-out", self.ca_file],
                       check=True, capture_output=True, timeout=60)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.ca_file, key_file)
        self._target_port = target_port

        def handler(sock):
            try:
                tls = context.wrap_socket(sock, server_side=True)
            except (ssl.SSLError, OSError):
                return
            upstream = socket.create_connection(("127.0.0.1", self._target_port), timeout=10)

            def pump(source, sink):
                try:
                    while True:
                        data = source.recv(65536)
                        if not data:
                            break
                        sink.sendall(data)
                except OSError:
                    pass
                finally:
                    for s in (source, sink):
                        try:
                            s.shutdown(socket.SHUT_RDWR)
                        except OSError:
                            pass

            tls.settimeout(None)
            upstream.settimeout(None)
            back = threading.Thread(target=pump, args=(upstream, tls), daemon=True)
            back.start()
            pump(tls, upstream)
            back.join(10)
            upstream.close()
            tls.close()

        self._server = FakeServer(handler)
        self.address = self._server.address

    def close(self):
        self._server.close()
        shutil.rmtree(self._dir, ignore_errors=True)
