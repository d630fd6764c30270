"""Anthropic's Messages API on qins-web, through the official `anthropic`
Python package: a real qins-web in front of a real qinsd serving the tiny
random-weight model (its replies are random text; shapes, counts, event
order and tool-call plumbing are checked, not wording). `anthropic` is
pinned in requirements.txt; run.sh installs it into a cached venv.
"""

import json
import unittest

try:
    import anthropic
except ImportError:  # reported as a failure of every test, see setUp
    anthropic = None

from qins_stack import MODEL, Stack, require_package

WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 12},
                       "unit": {"enum": ["C", "F"]}},
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
}
HELLO = [{"role": "user", "content": "Hello there"}]


class AnthropicApiTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.client = None
        if anthropic is None:
            return  # every test fails with the reason
        cls.stack = Stack.start(cls)
        cls.client = anthropic.Anthropic(
            base_url=cls.stack.base, api_key="not-checked", max_retries=0, timeout=60.0
        )

    def setUp(self):
        require_package(self, anthropic, "anthropic")

    def create(self, sampling=None, **kw):
        """A greedy message; `sampling` adds members this package version
        has no keyword for (it dropped temperature, top_p and top_k)."""
        kw.setdefault("max_tokens", 6)
        kw.setdefault("messages", HELLO)
        return self.client.messages.create(
            model=MODEL, extra_body={"temperature": 0, **(sampling or {})}, **kw
        )

    def test_a_message_has_anthropic_s_shape(self):
        r = self.create(system="Be brief.", metadata={"user_id": "u1"}, sampling={"top_k": 5},
                        stop_sequences=["qqqq"])
        self.assertTrue(r.id.startswith("msg_"), r.id)
        self.assertEqual((r.type, r.role, r.model), ("message", "assistant", MODEL))
        self.assertEqual([b.type for b in r.content], ["text"])
        self.assertIn(r.stop_reason, ("end_turn", "max_tokens"))
        self.assertIsNone(r.stop_sequence)
        self.assertGreater(r.usage.input_tokens, 0)
        if r.stop_reason == "max_tokens":
            self.assertEqual(r.usage.output_tokens, 6)
        # Greedy: the same request gives the same text.
        again = self.create(system="Be brief.", metadata={"user_id": "u1"},
                            sampling={"top_k": 5}, stop_sequences=["qqqq"])
        self.assertEqual(again.content[0].text, r.content[0].text)

    def test_a_stop_sequence_is_reported_with_the_string(self):
        # Greedy: the reply repeats, so a piece of it stops the next one there.
        text = self.create(max_tokens=12).content[0].text
        stop = text[4:7]
        self.assertEqual(len(stop), 3, repr(text))
        r = self.create(max_tokens=12, stop_sequences=[stop, "qqqq"])
        self.assertEqual(r.stop_reason, "stop_sequence")
        self.assertEqual(r.stop_sequence, stop)
        self.assertEqual(r.content[0].text, text[:text.find(stop)])
        with self.client.messages.stream(model=MODEL, max_tokens=12, messages=HELLO,
                                         stop_sequences=[stop],
                                         extra_body={"temperature": 0}) as stream:
            final = stream.get_final_message()
        self.assertEqual((final.stop_reason, final.stop_sequence), ("stop_sequence", stop))

    def test_streaming_gives_the_event_sequence_and_the_same_text(self):
        whole = self.create()
        with self.client.messages.stream(model=MODEL, max_tokens=6, messages=HELLO,
                                         extra_body={"temperature": 0}) as stream:
            events = list(stream)
            final = stream.get_final_message()
        kinds = [e.type for e in events]
        self.assertEqual(kinds[0], "message_start")
        self.assertEqual(kinds[-1], "message_stop")
        self.assertIn("message_delta", kinds)
        self.assertIn("content_block_start", kinds)
        self.assertIn("content_block_stop", kinds)
        self.assertEqual(final.content[0].text, whole.content[0].text)
        self.assertEqual(final.stop_reason, whole.stop_reason)
        self.assertEqual(final.usage.output_tokens, whole.usage.output_tokens)

    def test_a_tool_round_trip(self):
        # One call: the random model would otherwise keep calling (see
        # test_openai_params's parallel test).
        one = {"disable_parallel_tool_use": True}
        r = self.create(tools=[WEATHER], tool_choice={"type": "tool", "name": "get_weather", **one},
                        max_tokens=150)
        self.assertEqual(r.stop_reason, "tool_use")
        calls = [b for b in r.content if b.type == "tool_use"]
        self.assertEqual(len(calls), 1)
        call = calls[0]
        self.assertEqual(call.name, "get_weather")
        self.assertEqual(set(call.input), {"city", "unit"})
        self.assertIn(call.input["unit"], ("C", "F"))
        # The result goes back to the model: the prompt grows by it.
        messages = HELLO + [
            {"role": "assistant", "content": [c.model_dump() for c in r.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                          "content": "18 degrees, sunny"}]},
        ]
        answer = self.create(tools=[WEATHER], messages=messages, max_tokens=4)
        self.assertGreater(answer.usage.input_tokens, r.usage.input_tokens + 10)
        # Streamed, the call is a tool_use block with its input as JSON.
        with self.client.messages.stream(
            model=MODEL, max_tokens=150, messages=HELLO, tools=[WEATHER],
            tool_choice={"type": "tool", "name": "get_weather", **one},
            extra_body={"temperature": 0},
        ) as stream:
            final = stream.get_final_message()
        self.assertEqual(final.stop_reason, "tool_use")
        self.assertEqual(final.content[-1].type, "tool_use")
        self.assertEqual(final.content[-1].input, call.input)
        # `any`: a call of one of the tools.
        r = self.create(tools=[WEATHER], tool_choice={"type": "any", **one}, max_tokens=150)
        self.assertEqual(r.stop_reason, "tool_use")
        self.assertEqual(r.content[-1].name, "get_weather")

    def test_parallel_calls_are_several_tool_use_blocks(self):
        # Greedy, the random model takes the newline after every call: the
        # grammar's bound, 8 calls, ends the reply (2026-12-07: 572 tokens).
        r = self.create(tools=[WEATHER], tool_choice={"type": "any"}, max_tokens=700)
        self.assertEqual(r.stop_reason, "tool_use")
        calls = [b for b in r.content if b.type == "tool_use"]
        self.assertEqual(len(calls), 8)
        self.assertEqual(len({c.id for c in calls}), 8, "ids are unique")
        for call in calls:
            self.assertEqual(set(call.input), {"city", "unit"})
        with self.client.messages.stream(
            model=MODEL, max_tokens=700, messages=HELLO, tools=[WEATHER],
            tool_choice={"type": "any"}, extra_body={"temperature": 0},
        ) as stream:
            events = list(stream)
            final = stream.get_final_message()
        starts = [e.index for e in events if e.type == "content_block_start"]
        self.assertEqual(starts, list(range(8)))
        self.assertEqual([b.input for b in final.content], [c.input for c in calls])
        # disable_parallel_tool_use: one call (the prompt no longer offers
        # several, so it need not be the first of those above).
        one = self.create(tools=[WEATHER], max_tokens=700,
                          tool_choice={"type": "any", "disable_parallel_tool_use": True})
        self.assertEqual(one.stop_reason, "tool_use")
        self.assertEqual([b.type for b in one.content], ["tool_use"])
        self.assertEqual(set(one.content[0].input), {"city", "unit"})

    def test_count_tokens_matches_the_prompt_a_message_reads(self):
        counted = self.client.messages.count_tokens(model=MODEL, messages=HELLO,
                                                    system="Be brief.")
        r = self.create(system="Be brief.")
        self.assertEqual(counted.input_tokens, r.usage.input_tokens)
        with_tools = self.client.messages.count_tokens(model=MODEL, messages=HELLO,
                                                       tools=[WEATHER])
        self.assertGreater(with_tools.input_tokens, counted.input_tokens)

    def test_errors_have_anthropic_s_shape(self):
        with self.assertRaises(anthropic.BadRequestError) as cm:
            self.create(messages=[{"role": "user", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                             "data": "iVBORw0KGgo="}}]}])
        self.assertEqual(cm.exception.status_code, 400)
        body = cm.exception.body
        self.assertEqual(body["type"], "error")
        self.assertEqual(body["error"]["type"], "invalid_request_error")
        self.assertIn('"image"', body["error"]["message"])
        with self.assertRaises(anthropic.BadRequestError) as cm:
            self.create(thinking={"type": "enabled", "budget_tokens": 1024})
        self.assertIn("thinking", cm.exception.body["error"]["message"])
        # max_tokens is required, as Anthropic's API has it.
        raw = self.client.messages.with_raw_response
        with self.assertRaises(anthropic.BadRequestError) as cm:
            raw.create(model=MODEL, messages=HELLO, max_tokens=1,
                       extra_body={"max_tokens": None})
        self.assertIn("max_tokens", cm.exception.body["error"]["message"])


if __name__ == "__main__":
    unittest.main()
