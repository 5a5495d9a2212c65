"""Runs the real litestage-server binary for the Python tests and benchmarks.

`setup(bin_dir, proto_root)` compiles litestage.proto and grpc's health and
reflection protos into a scratch directory (removed by `cleanup()`), and
`Server(*flags)` starts `litestage-server` on free loopback ports and waits
for readiness, the way a deployment probes it.

Needs Debian's python3-grpcio, python3-grpc-tools, python3-prometheus-client
and grpc-proto (scripts/install-deps.sh); a missing one is an error.
"""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import grpc
from grpc_tools import protoc
from prometheus_client.parser import text_string_to_metric_families

SERVICE = "litestage.v1.LiteStage"
GRPC_PROTO_ROOT = "/usr/share/grpc-proto"

BIN_DIR = ""
STUBS = ""


def setup(bin_dir, proto_root):
    """Generates the stubs (importable afterwards) and remembers BIN_DIR."""
    global BIN_DIR, STUBS
    BIN_DIR = os.path.abspath(bin_dir)
    STUBS = tempfile.mkdtemp(prefix="litestage_stubs.")
    # Copies of grpc's protos under names that do not shadow the installed
    # `grpc` package.
    for source, name in (
        ("grpc/health/v1/health.proto", "health_v1.proto"),
        ("grpc/reflection/v1alpha/reflection.proto", "reflection_v1alpha.proto"),
    ):
        path = os.path.join(GRPC_PROTO_ROOT, source)
        if not os.path.exists(path):
            raise RuntimeError(f"{path} is missing (apt-get install grpc-proto)")
        shutil.copy(path, os.path.join(STUBS, name))
    for include, proto in (
        (os.path.abspath(proto_root), "litestage/v1/litestage.proto"),
        (STUBS, "health_v1.proto"),
        (STUBS, "reflection_v1alpha.proto"),
    ):
        rc = protoc.main(["protoc", f"-I{include}", f"--python_out={STUBS}",
                          f"--grpc_python_out={STUBS}", proto])
        if rc != 0:
            raise RuntimeError(f"protoc failed on {proto}")
    sys.path.insert(0, STUBS)


def cleanup():
    if STUBS:
        shutil.rmtree(STUBS, ignore_errors=True)


def pb():
    import litestage.v1.litestage_pb2 as litestage_pb2
    return litestage_pb2


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def binary(name):
    return os.path.join(BIN_DIR, name)


class Server:
    """A litestage-server process on free ports; stopped by close()."""

    def __init__(self, *flags, ready_timeout=120):
        self.dir = tempfile.mkdtemp(prefix="litestage-server.", dir=STUBS)
        self.metrics_port = free_port()
        self.log_path = os.path.join(self.dir, "server.log")
        port_file = os.path.join(self.dir, "port")
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                [binary("litestage-server"), "--port=0",
                 f"--port-file={port_file}", "--host=127.0.0.1",
                 f"--metrics-port={self.metrics_port}", *flags],
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + ready_timeout
        while not os.path.exists(port_file):
            self._check_alive(deadline)
            time.sleep(0.05)
        with open(port_file) as f:
            self.target = f"127.0.0.1:{int(f.read())}"
        self.channel = grpc.insecure_channel(self.target)
        while self.health(SERVICE) != "SERVING":
            self._check_alive(deadline)
            time.sleep(0.1)

    def _check_alive(self, deadline):
        if self.process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(
                f"server not ready (exit {self.process.poll()}): {self.log()}")

    def log(self):
        with open(self.log_path) as f:
            return f.read()

    def stub(self):
        import litestage.v1.litestage_pb2_grpc as pb_grpc
        return pb_grpc.LiteStageStub(self.channel)

    def health(self, service):
        """SERVING / NOT_SERVING / ..., or the gRPC code name on an error."""
        import health_v1_pb2
        import health_v1_pb2_grpc
        try:
            reply = health_v1_pb2_grpc.HealthStub(self.channel).Check(
                health_v1_pb2.HealthCheckRequest(service=service), timeout=5)
        except grpc.RpcError as e:
            return e.code().name
        return health_v1_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def metrics_text(self):
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        return urllib.request.urlopen(url, timeout=10).read().decode()

    def metrics(self):
        """{(name, frozenset(labels.items())): value} over every sample."""
        samples = {}
        for family in text_string_to_metric_families(self.metrics_text()):
            for s in family.samples:
                samples[(s.name, frozenset(s.labels.items()))] = s.value
        return samples

    def rss_kib(self):
        with open(f"/proc/{self.process.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def close(self):
        self.channel.close()
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def sample(samples, name, **labels):
    key = (name, frozenset(labels.items()))
    if key not in samples:
        raise AssertionError(f"no series {name}{labels}")
    return samples[key]
