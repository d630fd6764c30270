"""A stock Python gRPC client (grpcio, stubs generated from proto/qins.proto
at test time with grpcio-tools) talking to a real qinsd on its Unix socket,
with a plain `unix:PATH` channel and no option: no authority override.

gRPC C-core sends the percent-encoded socket path as the HTTP/2 `:authority`,
which h2 alone refuses (INTERNAL: Received RST_STREAM with error code 1);
qinsd rewrites it (qinsd/src/authority.rs). The daemon's debug log for that
module shows the authority it replaced, which the tests check too, so they
keep exercising the problem rather than passing by luck.

qinsd is started by qins_stack.Daemon. grpcio, grpcio-tools,
grpcio-health-checking and grpcio-reflection are pinned in requirements.txt;
tests/python/run.sh installs them into a cached venv.
"""

import importlib
import json
import sys
import unittest
from pathlib import Path

try:
    import grpc
    from google.protobuf import descriptor_pool
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )
    from grpc_tools import protoc

    MISSING = None
except ImportError as e:  # reported as a failure of every test, see setUp
    MISSING = e

from qins_stack import MODEL, ROOT, Daemon

CALL_TIMEOUT = 60.0


def generate_stubs(out_dir):
    """qins_pb2 and qins_pb2_grpc from proto/qins.proto, imported."""
    well_known = Path(protoc.__file__).parent / "_proto"
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{ROOT / 'proto'}",
            f"-I{well_known}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            str(ROOT / "proto" / "qins.proto"),
        ]
    )
    if status != 0:
        raise AssertionError(f"grpc_tools.protoc failed on proto/qins.proto (status {status})")
    sys.path.insert(0, str(out_dir))
    return importlib.import_module("qins_pb2"), importlib.import_module("qins_pb2_grpc")


class StockGrpcClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if MISSING is not None:
            return  # every test fails with the reason
        cls.daemon = Daemon.start(cls, ["--log-level", "info,qinsd::authority=debug"])
        stubs = cls.daemon.tmp / "stubs"
        stubs.mkdir()
        cls.pb, cls.pb_grpc = generate_stubs(stubs)
        cls.addClassCleanup(sys.path.remove, str(stubs))
        # What a user writes: the socket as the target, nothing else.
        cls.channel = grpc.insecure_channel(f"unix:{cls.daemon.socket}")
        cls.addClassCleanup(cls.channel.close)
        cls.qins = cls.pb_grpc.QinsStub(cls.channel)
        cls.health = health_pb2_grpc.HealthStub(cls.channel)

    def setUp(self):
        if MISSING is not None:
            self.fail(
                f"{MISSING}: run tests/python/run.sh, which installs "
                "tests/python/requirements.txt into ~/.cache/qins/venv-tests"
            )

    def test_health_check(self):
        Status = health_pb2.HealthCheckResponse
        for service in ("", "qins.v1.Qins"):
            reply = self.health.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=CALL_TIMEOUT
            )
            self.assertEqual(reply.status, Status.SERVING, f"service {service!r}")

    def test_reflection_describes_the_api(self):
        database = ProtoReflectionDescriptorDatabase(self.channel)
        services = set(database.get_services())
        self.assertLessEqual(
            {"qins.v1.Qins", "grpc.health.v1.Health"}, services, f"listed: {services}"
        )
        pool = descriptor_pool.DescriptorPool(database)
        qins = pool.FindServiceByName("qins.v1.Qins")
        methods = {m.name: m for m in qins.methods}
        self.assertLessEqual({"Chat", "Convert", "Stats", "ListModels"}, set(methods))
        self.assertTrue(methods["Chat"].server_streaming)
        self.assertEqual(methods["Chat"].input_type.full_name, "qins.v1.ChatRequest")

    def test_stats(self):
        stats = self.qins.Stats(self.pb.StatsRequest(), timeout=CALL_TIMEOUT)
        self.assertEqual(stats.model, MODEL)
        self.assertGreater(stats.model_parameters, 0)
        self.assertGreater(stats.process_rss_bytes, 0)
        self.assertTrue(stats.version)

    def test_chat_streams_deltas_then_done(self):
        pb = self.pb
        request = pb.ChatRequest(
            messages=[pb.Message(role="user", content="Hello there")],
            sampling=pb.Sampling(max_tokens=8, temperature=0),
        )
        events = list(self.qins.Chat(request, timeout=CALL_TIMEOUT))
        kinds = [e.WhichOneof("event") for e in events]
        self.assertEqual(kinds[-1], "done", f"events: {kinds}")
        self.assertEqual(kinds.count("done"), 1)
        self.assertIn("delta", kinds, "no text delta")
        done = events[-1].done
        self.assertEqual(done.model, MODEL)
        self.assertIn(done.finish_reason, (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH))
        self.assertGreater(done.usage.prompt_tokens, 0)
        self.assertGreater(done.usage.completion_tokens, 0)
        self.assertLessEqual(done.usage.completion_tokens, 8)
        text = "".join(e.delta.text for e in events if e.WhichOneof("event") == "delta")
        self.assertTrue(text, "the deltas carry text")
        self.assertEqual(done.stop_sequence, "", "no stop string ended it")
        # A piece of that greedy reply as a stop string: done names it.
        stop = text[2:5]
        self.assertEqual(len(stop), 3, repr(text))
        request.sampling.stop.extend(["qqqq", stop])
        events = list(self.qins.Chat(request, timeout=CALL_TIMEOUT))
        done = events[-1].done
        self.assertEqual(done.finish_reason, pb.FINISH_REASON_STOP)
        self.assertEqual(done.stop_sequence, stop)
        cut = "".join(e.delta.text for e in events if e.WhichOneof("event") == "delta")
        self.assertEqual(cut, text[:text.find(stop)])

    def test_bad_requests_get_their_status(self):
        with self.assertRaises(grpc.RpcError) as cm:
            list(self.qins.Chat(self.pb.ChatRequest(), timeout=CALL_TIMEOUT))
        self.assertEqual(cm.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)

    def test_raw_prompt_with_logprobs_and_sampling_extras(self):
        pb = self.pb
        # Token 310 of the tiny fixture's vocabulary is "Paris.": +100 forces it.
        request = pb.ChatRequest(
            prompt="Once upon a time",
            logprobs=True,
            top_logprobs=2,
            sampling=pb.Sampling(
                max_tokens=4, temperature=0, logit_bias={310: 100.0},
                presence_penalty=0.5, frequency_penalty=0.5, min_p=0.1,
            ),
        )
        events = list(self.qins.Chat(request, timeout=CALL_TIMEOUT))
        deltas = [e.delta for e in events if e.WhichOneof("event") == "delta"]
        tokens = [t for d in deltas for t in d.logprobs]
        self.assertEqual([t.id for t in tokens], [310] * 4)
        self.assertEqual("".join(d.text for d in deltas), "Paris." * 4)
        for t in tokens:
            self.assertEqual(t.text, "Paris.")
            self.assertEqual(t.bytes, b"Paris.")
            self.assertLessEqual(t.logprob, 0.0)
            self.assertEqual(len(t.top), 2)
            self.assertGreaterEqual(t.top[0].logprob, t.top[1].logprob)
        chat = pb.ChatRequest(
            messages=[pb.Message(role="user", content="Once upon a time")],
            sampling=pb.Sampling(max_tokens=1),
        )
        chat_done = list(self.qins.Chat(chat, timeout=CALL_TIMEOUT))[-1].done
        # The chat template adds role markers; the raw prompt has none.
        self.assertLess(events[-1].done.usage.prompt_tokens, chat_done.usage.prompt_tokens)

    def test_json_schema_output(self):
        pb = self.pb
        schema = {
            "type": "object",
            "properties": {"ok": {"type": "boolean"}, "n": {"enum": [1, 2, 3]}},
            "required": ["ok", "n"],
            "additionalProperties": False,
        }
        request = pb.ChatRequest(
            messages=[pb.Message(role="user", content="Answer in JSON")],
            sampling=pb.Sampling(max_tokens=100, temperature=1.0, seed=7),
            response_format=pb.ResponseFormat(json_schema=json.dumps(schema)),
        )
        events = list(self.qins.Chat(request, timeout=CALL_TIMEOUT))
        self.assertEqual(events[-1].done.finish_reason, pb.FINISH_REASON_STOP)
        text = "".join(e.delta.text for e in events if e.WhichOneof("event") == "delta")
        value = json.loads(text)
        self.assertIsInstance(value["ok"], bool)
        self.assertIn(value["n"], (1, 2, 3))
        bad = pb.ChatRequest(
            prompt="x", response_format=pb.ResponseFormat(json_schema="{not json"))
        with self.assertRaises(grpc.RpcError) as cm:
            list(self.qins.Chat(bad, timeout=CALL_TIMEOUT))
        self.assertEqual(cm.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("json_schema", cm.exception.details())

    def test_a_required_tool_call(self):
        pb = self.pb
        params = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 10}},
                  "required": ["city"], "additionalProperties": False}
        request = pb.ChatRequest(
            messages=[pb.Message(role="user", content="Weather in Paris?")],
            sampling=pb.Sampling(max_tokens=100, temperature=1.0, seed=3),
            tools=[pb.Tool(name="get_weather", description="Weather in a city",
                           parameters=json.dumps(params))],
            tool_choice="required",
            disable_parallel_tool_calls=True,
        )
        events = list(self.qins.Chat(request, timeout=CALL_TIMEOUT))
        done = events[-1].done
        self.assertEqual(done.finish_reason, pb.FINISH_REASON_TOOL_CALLS)
        self.assertEqual(len(done.tool_calls), 1)
        call = done.tool_calls[0]
        self.assertEqual(call.name, "get_weather")
        self.assertTrue(call.id.startswith("call_"))
        self.assertEqual(set(json.loads(call.arguments)), {"city"})
        # The call's text is not streamed as deltas.
        self.assertEqual("".join(e.delta.text for e in events[:-1]), "")

    def test_out_of_range_extras_are_invalid_arguments(self):
        pb = self.pb
        for sampling, name in [
            (pb.Sampling(presence_penalty=2.5), "presence_penalty"),
            (pb.Sampling(min_p=1.5), "min_p"),
            (pb.Sampling(logit_bias={99999: 1.0}), "logit_bias"),
        ]:
            request = pb.ChatRequest(prompt="x", sampling=sampling)
            with self.assertRaises(grpc.RpcError) as cm:
                list(self.qins.Chat(request, timeout=CALL_TIMEOUT))
            self.assertEqual(cm.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
            self.assertIn(name, cm.exception.details())

    def test_the_daemon_replaced_the_socket_path_authority(self):
        # Proof that this client sends an authority h2 would refuse: the
        # socket path, percent-encoded by gRPC C-core (grpcio 1.85 sends
        # "tmp%2Fqins-py.XXXX%2Fs.sock").
        self.qins.Stats(self.pb.StatsRequest(), timeout=CALL_TIMEOUT)
        log = self.daemon.log.read_text(errors="replace")
        self.assertRegex(
            log, r"replacing an :authority h2 would refuse authority=\S*%2Fs\.sock"
        )


if __name__ == "__main__":
    unittest.main()
