"""ollama's API on qins-web, through the official `ollama` Python package:
a real qins-web in front of a real qinsd serving the tiny random-weight
model (its replies are random text; shapes, counts and determinism are
checked, not wording). `ollama` is pinned in requirements.txt; run.sh
installs it into a cached venv.
"""

import datetime
import json
import unittest

try:
    import ollama
except ImportError:  # reported as a failure of every test, see setUp
    ollama = None

from qins_stack import MODEL, Stack, require_package

TAGGED = MODEL + ":latest"


class OllamaApiTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.client = None
        if ollama is None:
            return  # every test fails with the reason
        cls.stack = Stack.start(cls)
        cls.client = ollama.Client(host=cls.stack.base, timeout=60)

    def setUp(self):
        require_package(self, ollama, "ollama")

    def chat(self, **kw):
        kw.setdefault("options", {"num_predict": 8, "temperature": 0})
        return self.client.chat(
            model=MODEL, messages=[{"role": "user", "content": "Hello there"}], **kw
        )

    def test_version_is_numeric_and_recent_enough_for_clients(self):
        status, _, body = self.stack.get("/api/version")
        self.assertEqual(status, 200)
        version = json.loads(body)["version"]
        # VS Code's Copilot needs an ollama of at least 0.6.4.
        self.assertGreaterEqual(tuple(int(p) for p in version.split(".")), (0, 6, 4))

    def test_list_shows_the_model_with_details(self):
        models = self.client.list().models
        self.assertEqual([m.model for m in models], [TAGGED])
        m = models[0]
        self.assertGreater(m.size, 0)
        self.assertIsInstance(m.modified_at, datetime.datetime)
        self.assertEqual(len(m.digest), 64)
        self.assertEqual(m.details.format, "qins")
        self.assertEqual(m.details.family, "phi3")
        self.assertEqual(m.details.families, ["phi3"])
        self.assertTrue(m.details.parameter_size)
        self.assertEqual(m.details.quantization_level, "QINS8")

    def test_show(self):
        for name in (MODEL, TAGGED):
            r = self.client.show(name)
            self.assertEqual(r.modelinfo["general.architecture"], "phi3")
            self.assertGreater(r.modelinfo["general.parameter_count"], 0)
            self.assertEqual(r.modelinfo["phi3.context_length"], 4096)
            self.assertEqual(r.capabilities, ["completion", "tools"])
            self.assertEqual(r.details.family, "phi3")
        with self.assertRaises(ollama.ResponseError) as cm:
            self.client.show("missing")
        self.assertEqual(cm.exception.status_code, 404)
        self.assertIn("missing", cm.exception.error)

    def test_ps_shows_the_resident_model(self):
        models = self.client.ps().models
        self.assertEqual(len(models), 1)
        m = models[0]
        self.assertEqual(m.model, TAGGED)
        self.assertEqual(m.name, TAGGED)
        self.assertGreater(m.size, 0)
        self.assertEqual(m.size_vram, 0, "the model is on the CPU")
        self.assertEqual(m.context_length, 4096)
        self.assertEqual(m.details.family, "phi3")

    def test_chat_without_streaming(self):
        r = self.chat(stream=False, keep_alive="5m")
        self.assertTrue(r.done)
        self.assertIn(r.done_reason, {"stop", "length"})
        self.assertEqual(r.model, MODEL, "the request's name is echoed")
        self.assertEqual(r.message.role, "assistant")
        self.assertTrue(r.message.content)
        self.assertGreater(r.prompt_eval_count, 0)
        self.assertGreaterEqual(r.eval_count, 1)
        self.assertLessEqual(r.eval_count, 8)
        self.assertGreater(r.total_duration, 0)
        self.assertGreaterEqual(r.total_duration, r.eval_duration)
        self.assertIsInstance(r.created_at, str)

    def test_streamed_chat_matches_the_whole_reply(self):
        whole = self.chat(stream=False).message.content
        parts = list(self.chat(stream=True))
        self.assertGreater(len(parts), 1)
        self.assertTrue(all(not p.done for p in parts[:-1]))
        last = parts[-1]
        self.assertTrue(last.done)
        self.assertIn(last.done_reason, {"stop", "length"})
        self.assertGreaterEqual(last.eval_count, 1)
        streamed = "".join(p.message.content or "" for p in parts)
        self.assertEqual(streamed, whole, "greedy: the same reply streamed or not")

    def test_options_are_honoured(self):
        one = self.chat(stream=False, options={"num_predict": 1, "temperature": 0})
        self.assertEqual(one.eval_count, 1)
        self.assertEqual(one.done_reason, "length")
        seeded = {"num_predict": 12, "temperature": 1.0, "top_p": 0.9, "top_k": 50, "seed": 42}
        a = self.chat(stream=False, options=seeded).message.content
        b = self.chat(stream=False, options=seeded).message.content
        self.assertEqual(a, b, "the same seed gives the same sample")
        # A stop string taken from the middle of the greedy reply cuts it there.
        text = self.chat(stream=False, options={"num_predict": 12, "temperature": 0}).message.content
        stops = [text[i : i + 2] for i in range(2, len(text) - 2) if not text[i : i + 2].isspace()]
        self.assertTrue(stops, f"no stop string to take from {text!r}")
        stop = stops[len(stops) // 2]
        cut = self.chat(stream=False, options={"num_predict": 12, "temperature": 0, "stop": stop})
        self.assertEqual(cut.done_reason, "stop")
        self.assertEqual(cut.message.content, text[: text.index(stop)])

    def test_generate_streamed_and_not(self):
        options = {"num_predict": 6, "temperature": 0}
        whole = self.client.generate(
            model=MODEL, prompt="Why is the sky blue?", system="Be brief.", options=options
        )
        self.assertTrue(whole.done)
        self.assertTrue(whole.response)
        self.assertLessEqual(whole.eval_count, 6)
        parts = list(
            self.client.generate(
                model=TAGGED, prompt="Why is the sky blue?", system="Be brief.",
                options=options, stream=True,
            )
        )
        self.assertTrue(parts[-1].done)
        self.assertEqual("".join(p.response for p in parts), whole.response)
        loaded = self.client.generate(model=MODEL)
        self.assertEqual(loaded.done_reason, "load")

    def test_raw_generate_skips_the_template_and_penalties_apply(self):
        templated = self.client.generate(
            model=MODEL, prompt="Once upon a time", options={"num_predict": 1})
        raw = self.client.generate(
            model=MODEL, prompt="Once upon a time", raw=True, options={"num_predict": 1})
        self.assertLess(raw.prompt_eval_count, templated.prompt_eval_count)
        greedy = {"temperature": 0, "num_predict": 12}
        plain = self.client.generate(model=MODEL, prompt="Hi", raw=True, options=greedy)
        # min_p 1 keeps only the most likely token: hot sampling turns greedy.
        hot = self.client.generate(
            model=MODEL, prompt="Hi", raw=True,
            options={"temperature": 1.5, "seed": 3, "num_predict": 12, "min_p": 1.0})
        self.assertEqual(hot.response, plain.response)
        penalised = self.client.generate(
            model=MODEL, prompt="Hi", raw=True,
            options={**greedy, "presence_penalty": 2.0, "frequency_penalty": 2.0})
        # Accepted now (refused before qinsd had these samplers).
        self.assertTrue(penalised.done)
        self.assertGreaterEqual(penalised.eval_count, 1)

    def test_format_schema_gives_valid_json(self):
        schema = {
            "type": "object",
            "properties": {"ok": {"type": "boolean"}, "n": {"enum": [1, 2, 3]}},
            "required": ["ok", "n"],
            "additionalProperties": False,
        }
        for seed in (1, 2):
            reply = self.chat(stream=False, format=schema,
                              options={"temperature": 1.0, "seed": seed, "num_predict": 100})
            self.assertEqual(reply.done_reason, "stop")
            value = json.loads(reply.message.content)
            self.assertIsInstance(value["ok"], bool)
            self.assertIn(value["n"], (1, 2, 3))
            self.assertEqual(len(value), 2)

    def test_tools_are_accepted_and_results_go_back(self):
        tools = [{"type": "function", "function": {
            "name": "get_weather", "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string",
                                                                     "maxLength": 10}},
                           "required": ["city"], "additionalProperties": False}}}]
        messages = [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": "",
             "tool_calls": [{"function": {"name": "get_weather",
                                          "arguments": {"city": "Paris"}}}]},
            {"role": "tool", "content": "18 C", "tool_name": "get_weather"},
        ]
        opts = {"num_predict": 60, "temperature": 1.0, "seed": 4}
        short = self.client.chat(model=MODEL, messages=messages[:1], tools=tools, options=opts)
        full = self.client.chat(model=MODEL, messages=messages, tools=tools, options=opts)
        self.assertGreater(full.prompt_eval_count, short.prompt_eval_count + 10)
        # The tiny model chooses at random; whatever it chose is well formed.
        for reply in (short, full):
            for call in reply.message.tool_calls or []:
                self.assertEqual(call.function.name, "get_weather")
                self.assertEqual(set(call.function.arguments), {"city"})

    def refusal(self, status, call):
        with self.assertRaises(ollama.ResponseError) as cm:
            call()
        self.assertEqual(cm.exception.status_code, status, cm.exception.error)
        return cm.exception.error

    def test_what_qinsd_cannot_do_is_refused_by_name(self):
        cases = [
            ("num_gpu", lambda: self.chat(stream=False, options={"num_gpu": 1})),
            ("mirostat", lambda: self.chat(stream=False, options={"mirostat": 2})),
            ("min_p", lambda: self.chat(stream=False, options={"min_p": 2.0})),
            ("think", lambda: self.chat(stream=False, think=True)),
            ("system", lambda: self.client.generate(
                model=MODEL, prompt="x", system="y", raw=True)),
        ]
        for name, call in cases:
            with self.subTest(name):
                self.assertIn(name, self.refusal(400, call))
        error = self.refusal(
            404,
            lambda: self.client.chat(model="other", messages=[{"role": "user", "content": "x"}]),
        )
        self.assertIn("qins load", error)
        error = self.refusal(400, lambda: self.chat(stream=False, options={"temperature": -1}))
        self.assertIn("temperature", error)


if __name__ == "__main__":
    unittest.main()
