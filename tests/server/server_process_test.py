#!/usr/bin/python3
"""Out-of-process checks of the real litestage-server binary.

Each test starts `litestage-server` on free ports and talks to it the way a
deployment does: gRPC from Python (stubs generated from the .proto files at
test time), /metrics over HTTP, signals to the process.

  * reflection lists litestage.v1.LiteStage and serves its descriptor;
  * after a known set of requests, /metrics passes `promtool check metrics`,
    parses with prometheus_client, and every per-stage series holds exactly
    the counts the responses report;
  * with 64 silent, 16 half-sent, 4 never-read and a slow-loris socket open
    on the metrics port, a scrape answers within 1 s and passes promtool
    (the Exposer it replaced had two threads and no timeout);
  * SIGTERM under load: readiness turns NOT_SERVING, new requests get
    UNAVAILABLE, every accepted request finishes OK, the process exits 0;
  * a grace period too short for the accepted requests ends them with
    UNAVAILABLE (naming the grace period) and still exits 0.

Usage: server_process_test.py BIN_DIR PROTO_ROOT [unittest args]
Needs Debian's python3-grpcio, python3-grpc-tools, python3-prometheus-client,
grpc-proto and prometheus (promtool); scripts/install-deps.sh installs them,
and a missing one is a failure, not a skip.
"""

import atexit
import collections
import concurrent.futures
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import unittest
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import server_harness as harness  # noqa: E402
from server_harness import SERVICE, Server, pb, sample  # noqa: E402

import grpc  # noqa: E402


class ReflectionTest(unittest.TestCase):
    def test_lists_service_and_serves_its_descriptor(self):
        import reflection_v1alpha_pb2 as reflection_pb2
        import reflection_v1alpha_pb2_grpc as reflection_grpc
        from google.protobuf import descriptor_pb2
        server = Server("--model=synthetic:tiny")
        self.addCleanup(server.close)
        stub = reflection_grpc.ServerReflectionStub(server.channel)
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE),
        ]
        listed, file_reply = list(stub.ServerReflectionInfo(iter(requests), timeout=10))
        names = [s.name for s in listed.list_services_response.service]
        self.assertIn(SERVICE, names)
        self.assertIn("grpc.health.v1.Health", names)
        files = [descriptor_pb2.FileDescriptorProto.FromString(raw) for raw in
                 file_reply.file_descriptor_response.file_descriptor_proto]
        ours = [f for f in files if f.package == "litestage.v1"]
        self.assertEqual(len(ours), 1, [f.name for f in files])
        methods = {m.name for s in ours[0].service for m in s.method}
        self.assertEqual(methods, {"Reason", "ReasonStream", "Generate",
                                   "GenerateStream", "GetServerInfo", "ListProfiles"})


class MetricsTest(unittest.TestCase):
    maxDiff = None
    """A known set of requests, then every per-stage series checked exactly."""

    def test_promtool_and_exact_per_stage_counts(self):
        litestage_pb2 = pb()
        # synthetic:tiny has 2 layers; even:1 skips layer 1 (both sub-layers).
        server = Server("--model=synthetic:tiny")
        self.addCleanup(server.close)
        stub = server.stub()
        info = stub.GetServerInfo(litestage_pb2.GetServerInfoRequest(), timeout=10)
        pipeline = info.default_pipeline
        num_layers = 2

        def reason(**overrides):
            return litestage_pb2.ReasonRequest(
                question="Is ice cold?", choices=["yes", "no"], max_new_tokens=8,
                **overrides)

        responses = [
            stub.Reason(reason(), timeout=120),
            stub.Reason(reason(profile="even:1",
                               early_exit=litestage_pb2.EarlyExit(window=2, threshold=1.0)),
                        timeout=120),
        ]
        events = list(stub.ReasonStream(reason(profile="even:1"), timeout=120))
        self.assertTrue(events[-1].HasField("result"))
        responses.append(events[-1].result)
        generated = stub.Generate(litestage_pb2.GenerateRequest(
            prompt="Once upon a time", max_new_tokens=8), timeout=120)
        with self.assertRaises(grpc.RpcError) as invalid:
            stub.Reason(litestage_pb2.ReasonRequest(question=""), timeout=30)
        self.assertEqual(invalid.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("question", invalid.exception.details())

        # The early-exit request (threshold 1: fires once the window is full)
        # must really have exited, or the counter check below proves nothing.
        self.assertGreater(sum(s.early_exits for s in responses[1].stages), 0)

        text = server.metrics_text()
        promtool = subprocess.run(["promtool", "check", "metrics"], input=text,
                                  capture_output=True, text=True)
        self.assertEqual(promtool.returncode, 0, promtool.stdout + promtool.stderr)
        samples = server.metrics()

        stage_names = [s.name for s in responses[0].stages]
        self.assertEqual(len(stage_names), 3)
        for index, stage in enumerate(stage_names):
            records = [r.stages[index] for r in responses]
            labels = dict(pipeline=pipeline, stage=stage)
            for histogram in ("litestage_stage_latency_seconds",
                              "litestage_stage_prefill_seconds",
                              "litestage_stage_decode_seconds"):
                self.assertEqual(sample(samples, histogram + "_count", **labels), 3,
                                 (histogram, stage))
            self.assertAlmostEqual(
                sample(samples, "litestage_stage_latency_seconds_sum", **labels),
                sum(r.seconds for r in records), delta=1e-3)
            self.assertEqual(
                sample(samples, "litestage_stage_generated_tokens_total", **labels),
                sum(r.generated_tokens for r in records))
            self.assertEqual(
                sample(samples, "litestage_stage_early_exits_total", **labels),
                sum(r.early_exits for r in records))
            for kind in ("attention", "mlp"):
                for action in ("executed", "skipped"):
                    self.assertEqual(
                        sample(samples, "litestage_sublayers_total", kind=kind,
                               action=action, **labels),
                        sum(getattr(r.sublayers, f"{kind}_{action}") for r in records),
                        (stage, kind, action))
            # Independent of the response fields' sums: each token fed through
            # the model passes every layer once per kind, and even:1 skips
            # exactly one of the two layers.
            for record, skipped_layers in zip(records, (0, 1, 1)):
                fed = record.forwarded_tokens
                self.assertGreater(fed, 0)
                self.assertEqual(record.sublayers.attention_executed
                                 + record.sublayers.attention_skipped, num_layers * fed)
                self.assertEqual(record.sublayers.attention_skipped, skipped_layers * fed)
                self.assertEqual(record.sublayers.mlp_skipped, skipped_layers * fed)
            self.assertEqual(sample(samples, "litestage_stage_skip_ratio",
                                    profile="even:1", **labels), 0.5)
            self.assertEqual(sample(samples, "litestage_stage_skip_ratio",
                                    profile="full", **labels), 0.0)

        requests = {(k[0], dict(k[1]).get("method"), dict(k[1]).get("code")): v
                    for k, v in samples.items() if k[0] == "litestage_requests_total"}
        self.assertEqual({k: v for k, v in requests.items() if v}, {
            ("litestage_requests_total", "Reason", "OK"): 2,
            ("litestage_requests_total", "ReasonStream", "OK"): 1,
            ("litestage_requests_total", "Generate", "OK"): 1,
            ("litestage_requests_total", "GetServerInfo", "OK"): 1,
            ("litestage_requests_total", "Reason", "INVALID_ARGUMENT"): 1,
        })
        self.assertEqual(sample(samples, "litestage_request_latency_seconds_count",
                                method="Reason"), 3)
        self.assertEqual(sample(samples, "litestage_queue_depth"), 0)
        self.assertEqual(sample(samples, "litestage_requests_running"), 0)
        self.assertEqual(sample(samples, "litestage_kv_cache_usage_ratio"), 0)
        self.assertGreater(sample(samples, "litestage_batch_size_count"), 0)
        # One inter-token gap per generated token after a sequence's first.
        self.assertGreater(sample(samples, "litestage_inter_token_latency_seconds_count"), 0)
        models = [dict(k[1]) for k, v in samples.items()
                  if k[0] == "litestage_model_info" and v == 1]
        self.assertEqual(len(models), 1, models)
        self.assertEqual(models[0]["backend"], "cpu")
        self.assertIn("synthetic:tiny", models[0]["model"])
        self.assertGreater(generated.generated_tokens, 0)


class MetricsUnderIdleConnectionsTest(unittest.TestCase):
    """Sockets that never finish a request must not blind /metrics."""

    IDLE = 64       # connected, silent
    HALF_OPEN = 16  # an unfinished request head
    UNREAD = 4      # a whole request, the response never read
    SCRAPE_SECONDS = 1.0

    def connect(self, port):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.addCleanup(s.close)
        return s

    def test_scrape_within_a_second_with_idle_and_half_open_sockets(self):
        server = Server("--model=synthetic:tiny")
        self.addCleanup(server.close)
        port = server.metrics_port
        for _ in range(self.IDLE):
            self.connect(port)
        # Unfinished heads cut at different places: in the request line,
        # between headers, in a header.
        head = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: */*\r\n"
        half_open = []
        for i in range(self.HALF_OPEN):
            s = self.connect(port)
            sent = len(head) * (i + 1) // (self.HALF_OPEN + 1)
            s.sendall(head[:sent])
            half_open.append((s, sent))
        # Complete requests whose answers are never read.
        for _ in range(self.UNREAD):
            self.connect(port).sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        # Slow loris: a complete request line, then a header byte at a time.
        loris = self.connect(port)
        loris.sendall(b"GET /metrics HTTP/1.1\r\nX")
        for ch in b"-Slow: 1":
            loris.send(bytes([ch]))
            time.sleep(0.01)

        start = time.monotonic()
        url = f"http://127.0.0.1:{port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as reply:
            status = reply.status
            content_type = reply.headers["Content-Type"]
            text = reply.read().decode()
        elapsed = time.monotonic() - start
        print(f"scrape with {self.IDLE + self.HALF_OPEN + self.UNREAD + 1} stalled "
              f"sockets open: {elapsed * 1e3:.1f} ms", file=sys.stderr)
        self.assertEqual(status, 200)
        self.assertLess(elapsed, self.SCRAPE_SECONDS,
                        f"scrape took {elapsed:.3f} s with {self.IDLE} idle and "
                        f"{self.HALF_OPEN} half-open, {self.UNREAD} unread sockets open")
        self.assertEqual(content_type, "text/plain; version=0.0.4; charset=utf-8")
        self.assertIn("litestage_model_info{", text)
        promtool = subprocess.run(["promtool", "check", "metrics"], input=text,
                                  capture_output=True, text=True)
        self.assertEqual(promtool.returncode, 0, promtool.stdout + promtool.stderr)

        # The half-open sockets were still open (not dropped to make room):
        # one finishes its request now and gets its answer.
        s, sent = half_open[-1]
        s.sendall(head[sent:] + b"\r\n")
        reply = s.recv(64)
        self.assertTrue(reply.startswith(b"HTTP/1.1 200 "), reply)
        self.assertIsNone(server.process.poll(), server.log())


class DrainTest(unittest.TestCase):
    """SIGTERM while requests run: none accepted is lost."""

    # synthetic:smollm2-135m: ~30-60 ms per decode step of the batch on two
    # cores, so 64 tokens keep the load running for seconds after SIGTERM.
    LOAD = 12
    TOKENS = 64

    def start_load(self, server, max_new_tokens):
        litestage_pb2 = pb()
        stub = server.stub()
        pool = concurrent.futures.ThreadPoolExecutor(self.LOAD)
        self.addCleanup(pool.shutdown)
        finished_at = {}

        def call(i):
            try:
                if i % 4 == 0:
                    reply = stub.Reason(litestage_pb2.ReasonRequest(
                        question="Is the sky blue?", choices=["yes", "no"],
                        max_new_tokens=max_new_tokens // 4), timeout=300)
                else:
                    reply = stub.Generate(litestage_pb2.GenerateRequest(
                        prompt=f"Request {i}: once upon a time",
                        max_new_tokens=max_new_tokens), timeout=300)
                return ("OK", reply)
            except grpc.RpcError as e:
                return (e.code().name, e.details())
            finally:
                finished_at[i] = time.monotonic()

        futures = [pool.submit(call, i) for i in range(self.LOAD)]
        # Accepted = counted by the server as queued or running.
        deadline = time.monotonic() + 60
        while True:
            samples = server.metrics()
            accepted = (sample(samples, "litestage_queue_depth")
                        + sample(samples, "litestage_requests_running"))
            if accepted == self.LOAD:
                break
            self.assertTrue(time.monotonic() < deadline and not any(f.done() for f in futures),
                            f"only {accepted} of {self.LOAD} accepted: {server.log()}")
            time.sleep(0.02)
        return futures, finished_at

    def test_sigterm_under_load_loses_no_accepted_request(self):
        litestage_pb2 = pb()
        server = Server("--model=synthetic:smollm2-135m", "--grace-period=120")
        self.addCleanup(server.close)
        futures, finished_at = self.start_load(server, self.TOKENS)
        sigterm_at = time.monotonic()
        server.process.send_signal(signal.SIGTERM)

        # While draining: readiness NOT_SERVING, liveness still SERVING, new
        # requests refused with UNAVAILABLE.
        deadline = time.monotonic() + 10
        while server.health(SERVICE) != "NOT_SERVING":
            self.assertLess(time.monotonic(), deadline, server.log())
            time.sleep(0.02)
        self.assertEqual(server.health(""), "SERVING")
        with self.assertRaises(grpc.RpcError) as refused:
            server.stub().Generate(litestage_pb2.GenerateRequest(
                prompt="late", max_new_tokens=1), timeout=30)
        self.assertEqual(refused.exception.code(), grpc.StatusCode.UNAVAILABLE)
        self.assertIn("draining", refused.exception.details())
        self.assertTrue(any(not f.done() for f in futures),
                        "the load finished before the checks; nothing was drained")

        results = [f.result(timeout=300) for f in futures]
        codes = collections.Counter(code for code, _ in results)
        self.assertEqual(codes, {"OK": self.LOAD}, results)
        for i, (_, reply) in enumerate(results):
            if i % 4 == 0:
                self.assertEqual(len(reply.stages), 3)
            else:
                self.assertIn(reply.finish_reason, ("length", "eos"))
                if reply.finish_reason == "length":
                    self.assertEqual(reply.generated_tokens, self.TOKENS)
        self.assertGreater(max(finished_at.values()), sigterm_at)
        self.assertEqual(server.process.wait(timeout=60), 0, server.log())
        self.assertIn("stopped", server.log())

    def test_grace_period_over_ends_requests_with_unavailable(self):
        server = Server("--model=synthetic:smollm2-135m", "--grace-period=0.3")
        self.addCleanup(server.close)
        futures, _ = self.start_load(server, 500)
        server.process.send_signal(signal.SIGTERM)
        self.assertEqual(server.process.wait(timeout=60), 0, server.log())
        results = [f.result(timeout=60) for f in futures]
        for code, details in results:
            self.assertEqual(code, "UNAVAILABLE", results)
            self.assertIn("grace period", details)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: server_process_test.py BIN_DIR PROTO_ROOT [unittest args]")
    if shutil.which("promtool") is None:
        sys.exit("FAIL: promtool is missing (apt-get install prometheus)")
    harness.setup(sys.argv[1], sys.argv[2])
    atexit.register(harness.cleanup)  # Every exit path.
    del sys.argv[1:3]
    unittest.main(verbosity=2)
