"""Every OpenAI request parameter honoured or refused by name, through the
official `openai` package against a real qins-web and qinsd serving the
tiny random-weight fixture (qins_stack.Stack): the sampling extras
(presence/frequency penalties, min_p, logit_bias), logprobs and
top_logprobs (complete and streamed), `/v1/completions` (raw prompt, no
chat template), and 400s that name what is not supported.

The tiny model's replies are random text, so the checks force or compare
tokens instead of reading them: token 310 of its vocabulary is "Paris.", and
a +100 logit bias makes it the certain pick.
"""

import json
import unittest

try:
    import openai
except ImportError:  # reported as a failure of every test, see setUp
    openai = None

from qins_stack import MODEL, Stack, openai_client, require_package

PARIS = "310"
PROMPT = "Once upon a time"
# Every value bounded, so even a random model finishes well within the limit.
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "happy": {"type": "boolean"},
        "mood": {"enum": ["calm", "busy"]},
    },
    "required": ["name", "age", "happy", "mood"],
    "additionalProperties": False,
}

TOOLS = [{"type": "function", "function": {
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 12},
                       "unit": {"enum": ["C", "F"]}},
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
}}]
# Greedy, the tiny model takes the newline over the end after every call,
# up to the grammar's bound of 8 calls (2026-12-07: 572 tokens); sampled,
# most seeds keep calling until max_tokens, so the single-call tests below
# set parallel_tool_calls false.
PARALLEL_MAX_TOKENS = 700
CLOCK = {"type": "function", "function": {
    "name": "get_time", "description": "The time",
    "parameters": {"type": "object", "properties": {}, "additionalProperties": False},
}}


def check_schema(test, text):
    """The reply parses and validates against SCHEMA (checked by hand)."""
    value = json.loads(text)
    test.assertEqual(set(value), {"name", "age", "happy", "mood"}, text)
    test.assertIsInstance(value["name"], str)
    test.assertLessEqual(len(value["name"]), 8)
    test.assertIsInstance(value["age"], int)
    test.assertTrue(0 <= value["age"] <= 120, text)
    test.assertIsInstance(value["happy"], bool)
    test.assertIn(value["mood"], ("calm", "busy"))


class OpenAIParamsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.client = None
        if openai is None:
            return
        cls.stack = Stack.start(cls)
        cls.client = openai_client(openai, cls.stack)

    def setUp(self):
        require_package(self, openai, "openai")

    def chat(self, **kw):
        return self.client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": PROMPT}], **kw
        )

    def complete(self, **kw):
        return self.client.completions.create(model=MODEL, prompt=PROMPT, **kw)

    def tokens(self, reply):
        return [t.token for t in reply.choices[0].logprobs.content]

    def refused(self, param, call):
        with self.assertRaises(openai.BadRequestError) as cm:
            call()
        error = cm.exception
        self.assertEqual(error.status_code, 400)
        self.assertEqual(error.param, param, error.message)
        self.assertIn(param, error.message)
        return error

    # ---- sampling extras ----

    def test_logit_bias_forces_and_bans_a_token(self):
        r = self.chat(temperature=0, max_tokens=6, logprobs=True, logit_bias={PARIS: 100})
        self.assertEqual(self.tokens(r), ["Paris."] * 6)
        self.assertEqual(r.choices[0].message.content, "Paris." * 6)
        for bias_temperature in (0, 2.0):
            r = self.chat(
                temperature=bias_temperature, seed=1, max_tokens=24, logprobs=True,
                logit_bias={PARIS: -100},
            )
            self.assertNotIn("Paris.", self.tokens(r))

    def test_frequency_penalty_wears_a_forced_token_down(self):
        # Each repetition costs 2: after about 50 the +100 bias no longer
        # wins. Presence costs 2 once, so the forced token keeps winning.
        r = self.chat(
            temperature=0, max_tokens=80, logprobs=True, logit_bias={PARIS: 100},
            frequency_penalty=2.0,
        )
        count = self.tokens(r).count("Paris.")
        self.assertGreaterEqual(count, 30, self.tokens(r))
        self.assertLess(count, 80)
        r = self.chat(
            temperature=0, max_tokens=12, logprobs=True, logit_bias={PARIS: 100},
            presence_penalty=2.0,
        )
        self.assertEqual(self.tokens(r), ["Paris."] * 12)

    def test_min_p_one_keeps_only_the_top_token(self):
        greedy = self.chat(temperature=0, max_tokens=12).choices[0].message.content
        hot = [
            self.chat(temperature=1.5, seed=s, max_tokens=12, extra_body={"min_p": 1.0})
            .choices[0].message.content
            for s in (1, 2)
        ]
        self.assertEqual(hot, [greedy, greedy])
        # Without it, the same seeds wander off the greedy path.
        free = [
            self.chat(temperature=1.5, seed=s, max_tokens=12).choices[0].message.content
            for s in (1, 2, 3)
        ]
        self.assertTrue(any(f != greedy for f in free), free)

    def test_max_completion_tokens_wins_over_max_tokens(self):
        r = self.chat(temperature=0, max_tokens=9, max_completion_tokens=2,
                      logit_bias={PARIS: 100})
        self.assertEqual(r.usage.completion_tokens, 2)
        self.assertEqual(r.choices[0].finish_reason, "length")

    def test_out_of_range_values_are_refused_by_name(self):
        for kw, name in [
            ({"presence_penalty": 2.5}, "presence_penalty"),
            ({"frequency_penalty": -3}, "frequency_penalty"),
            ({"logit_bias": {"99999": 1}}, "logit_bias"),
            ({"logit_bias": {PARIS: 500}}, "logit_bias"),
            ({"extra_body": {"min_p": 2}}, "min_p"),
        ]:
            with self.assertRaises(openai.BadRequestError) as cm:
                self.chat(max_tokens=2, **kw)
            self.assertIn(name, cm.exception.message)

    # ---- response_format ----

    def test_json_schema_replies_always_validate(self):
        fmt = {"type": "json_schema",
               "json_schema": {"name": "person", "schema": SCHEMA, "strict": True}}
        for seed in (1, 2, 3):
            r = self.chat(temperature=1.0, seed=seed, max_tokens=200, response_format=fmt)
            self.assertEqual(r.choices[0].finish_reason, "stop")
            check_schema(self, r.choices[0].message.content)
        chunks = list(self.chat(temperature=1.0, seed=4, max_tokens=200, response_format=fmt,
                                stream=True))
        check_schema(self, "".join(c.choices[0].delta.content or "" for c in chunks))
        # The same request without the schema is the tiny model's noise.
        free = self.chat(temperature=1.0, seed=1, max_tokens=40).choices[0].message.content
        with self.assertRaises(ValueError):
            check_schema(self, free)

    def test_json_object_replies_are_objects(self):
        # "}" pushed up: the grammar still has to open the object first.
        r = self.chat(temperature=0, max_tokens=50, response_format={"type": "json_object"},
                      logit_bias={"125": 100})
        self.assertEqual(r.choices[0].finish_reason, "stop")
        self.assertEqual(json.loads(r.choices[0].message.content), {})

    def test_a_bad_schema_is_refused(self):
        with self.assertRaises(openai.BadRequestError) as cm:
            self.chat(max_tokens=2, response_format={
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "no-such-type"}}})
        self.assertIn("response_format", cm.exception.message)

    # ---- tools ----

    def check_weather_call(self, call):
        self.assertEqual(call.type, "function")
        self.assertTrue(call.id.startswith("call_"), call.id)
        self.assertEqual(call.function.name, "get_weather")
        args = json.loads(call.function.arguments)
        self.assertEqual(set(args), {"city", "unit"})
        self.assertLessEqual(len(args["city"]), 12)
        self.assertIn(args["unit"], ("C", "F"))

    def test_required_tool_calls_follow_the_schema(self):
        for seed in (1, 2, 3):
            r = self.chat(tools=TOOLS, tool_choice="required", temperature=1.0, seed=seed,
                          max_tokens=150, parallel_tool_calls=False)
            choice = r.choices[0]
            self.assertEqual(choice.finish_reason, "tool_calls")
            self.assertIsNone(choice.message.content)
            self.assertEqual(len(choice.message.tool_calls), 1)
            self.check_weather_call(choice.message.tool_calls[0])

    def test_parallel_tool_calls_are_several_calls_unless_false(self):
        """After a call the grammar offers a newline (another call) or the end."""
        ask = dict(tools=TOOLS, tool_choice="required", temperature=0,
                   max_tokens=PARALLEL_MAX_TOKENS)
        choice = self.chat(**ask).choices[0]
        self.assertEqual(choice.finish_reason, "tool_calls")
        calls = choice.message.tool_calls
        self.assertEqual(len(calls), 8)
        for call in calls:
            self.check_weather_call(call)
        self.assertEqual(len({c.id for c in calls}), len(calls), "ids are unique")
        # Streamed: the same calls, each delta entry with its index.
        chunks = list(self.chat(stream=True, **ask))
        streamed = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
        self.assertEqual([tc.index for tc in streamed], list(range(8)))
        self.assertEqual([tc.function.arguments for tc in streamed],
                         [c.function.arguments for c in calls])
        self.assertEqual(chunks[-1].choices[0].finish_reason, "tool_calls")
        # parallel_tool_calls false: exactly one.
        one = self.chat(parallel_tool_calls=False, **ask).choices[0]
        self.assertEqual(one.finish_reason, "tool_calls")
        self.assertEqual(len(one.message.tool_calls), 1)
        self.check_weather_call(one.message.tool_calls[0])

    def test_several_calls_and_their_results_go_back(self):
        call = lambda i, city: {"id": f"call_{i}", "type": "function", "function": {
            "name": "get_weather", "arguments": json.dumps({"city": city, "unit": "C"})}}
        messages = [
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {"role": "assistant", "content": None,
             "tool_calls": [call(1, "Paris"), call(2, "Rome")]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees"},
            {"role": "tool", "tool_call_id": "call_2", "content": "24 degrees"},
        ]
        create = self.client.chat.completions.create
        both = create(model=MODEL, messages=messages, tools=TOOLS, max_tokens=2)
        first = create(model=MODEL, messages=messages[:3], tools=TOOLS, max_tokens=2)
        self.assertGreater(both.usage.prompt_tokens, first.usage.prompt_tokens + 10)

    def test_a_named_tool_is_the_one_called(self):
        r = self.chat(tools=TOOLS + [CLOCK], max_tokens=150, temperature=1.0, seed=5,
                      parallel_tool_calls=False, tool_choice={"type": "function", "function": {"name": "get_time"}})
        call = r.choices[0].message.tool_calls[0]
        self.assertEqual(call.function.name, "get_time")
        self.assertEqual(json.loads(call.function.arguments), {})

    def test_streamed_tool_calls_come_in_a_delta(self):
        chunks = list(self.chat(tools=TOOLS, tool_choice="required", max_tokens=150,
                                temperature=1.0, seed=2, stream=True,
                                parallel_tool_calls=False))
        calls = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
        self.assertEqual(len(calls), 1)
        self.assertEqual(calls[0].index, 0)
        self.check_weather_call(calls[0])
        self.assertEqual(chunks[-1].choices[0].finish_reason, "tool_calls")
        self.assertEqual("".join(c.choices[0].delta.content or "" for c in chunks), "")

    def test_auto_lets_the_model_choose(self):
        # "{" pushed up: the model starts a call, and the grammar finishes it.
        r = self.chat(tools=TOOLS, max_tokens=150, temperature=1.0, seed=1,
                      logit_bias={"123": 100}, parallel_tool_calls=False)
        self.assertEqual(r.choices[0].finish_reason, "tool_calls")
        self.check_weather_call(r.choices[0].message.tool_calls[0])
        # "Paris." pushed up: plain text, streamed as usual.
        r = self.chat(tools=TOOLS, tool_choice="auto", max_tokens=4, temperature=0,
                      logit_bias={PARIS: 100})
        self.assertEqual(r.choices[0].message.content, "Paris." * 4)
        self.assertIsNone(r.choices[0].message.tool_calls)
        none = self.chat(tools=TOOLS, tool_choice="none", max_tokens=4, temperature=0,
                         logit_bias={"123": 100})
        self.assertIsNone(none.choices[0].message.tool_calls)
        self.assertTrue(none.choices[0].message.content.startswith("{"))

    def test_tool_results_go_back_to_the_model(self):
        call = {"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "C"}'}}
        messages = [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees, sunny"},
        ]
        r = self.client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS,
                                                max_tokens=4)
        short = self.client.chat.completions.create(model=MODEL, messages=messages[:1],
                                                    tools=TOOLS, max_tokens=4)
        self.assertGreater(r.usage.prompt_tokens, short.usage.prompt_tokens + 10)

    def test_bad_tool_requests_are_refused(self):
        with self.assertRaises(openai.BadRequestError) as cm:
            self.chat(tools=TOOLS, max_tokens=2,
                      tool_choice={"type": "function", "function": {"name": "nope"}})
        self.assertIn("tool_choice", cm.exception.message)
        with self.assertRaises(openai.BadRequestError) as cm:
            self.chat(tools=TOOLS, max_tokens=2, response_format={"type": "json_object"})
        self.assertIn("response_format", cm.exception.message)
        self.refused("tools[0].type", lambda: self.chat(
            max_tokens=2, tools=[{"type": "custom", "custom": {"name": "x"}}]))

    # ---- logprobs ----

    def test_logprobs_in_a_complete_reply(self):
        # Without a repetition penalty, greedy picks the raw argmax.
        r = self.chat(temperature=0, max_tokens=8, logprobs=True, top_logprobs=3,
                      extra_body={"repetition_penalty": 1.0})
        content = r.choices[0].logprobs.content
        if r.choices[0].finish_reason == "length":
            self.assertEqual(len(content), r.usage.completion_tokens)
        self.assertTrue(content)
        for t in content:
            self.assertLessEqual(t.logprob, 0.0)
            self.assertEqual(len(t.top_logprobs), 3)
            lps = [a.logprob for a in t.top_logprobs]
            self.assertEqual(lps, sorted(lps, reverse=True))
            # Greedy: the pick is the most likely token.
            self.assertEqual(t.top_logprobs[0].bytes, t.bytes)
            self.assertAlmostEqual(t.top_logprobs[0].logprob, t.logprob, places=5)
        # The tokens' bytes spell the reply. Random bytes need not be valid
        # UTF-8, and decoders differ in how many U+FFFD replace a bad run.
        joined = b"".join(bytes(t.bytes) for t in content)
        self.assertEqual(
            joined.decode("utf-8", errors="replace").replace("\ufffd", ""),
            r.choices[0].message.content.replace("\ufffd", ""),
        )
        plain = self.chat(temperature=0, max_tokens=8)
        self.assertIsNone(plain.choices[0].logprobs)
        self.assertEqual(plain.choices[0].message.content, r.choices[0].message.content)

    def test_logprobs_in_streamed_chunks_match_the_complete_reply(self):
        kw = dict(temperature=0, max_tokens=8, logprobs=True, top_logprobs=2)
        whole = self.chat(**kw).choices[0].logprobs.content
        chunks = list(self.chat(stream=True, **kw))
        streamed = [
            t for c in chunks if c.choices and c.choices[0].logprobs
            for t in c.choices[0].logprobs.content
        ]
        self.assertEqual(
            [(t.token, t.logprob, [a.token for a in t.top_logprobs]) for t in streamed],
            [(t.token, t.logprob, [a.token for a in t.top_logprobs]) for t in whole],
        )

    def test_top_logprobs_needs_logprobs_and_at_most_20(self):
        self.refused("top_logprobs", lambda: self.chat(max_tokens=2, top_logprobs=2))
        self.refused(
            "top_logprobs", lambda: self.chat(max_tokens=2, logprobs=True, top_logprobs=21)
        )

    # ---- refusals ----

    def test_what_is_not_honoured_is_refused_by_name(self):
        for param, kw in [
            ("frobnicate", {"extra_body": {"frobnicate": 1}}),
            ("response_format", {"response_format": {"type": "xml"}}),
            ("n", {"n": 2}),
            ("store", {"store": True}),
            ("reasoning_effort", {"reasoning_effort": "low"}),
        ]:
            self.refused(param, lambda: self.chat(max_tokens=2, **kw))
        self.refused("messages[0].name", lambda: self.client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x", "name": "bob"}],
        ))

    def test_neutral_values_are_accepted(self):
        r = self.chat(
            max_tokens=2, n=1, store=False, tools=[], tool_choice="none",
            response_format={"type": "text"}, user="someone", service_tier="auto",
            stream_options=None, modalities=["text"],
        )
        self.assertEqual(r.object, "chat.completion")

    # ---- /v1/completions ----

    def test_completion_continues_the_raw_prompt(self):
        r = self.complete(max_tokens=5, temperature=0)
        self.assertEqual(r.object, "text_completion")
        self.assertTrue(r.id.startswith("cmpl-"))
        self.assertEqual(r.model, MODEL)
        choice = r.choices[0]
        self.assertIsInstance(choice.text, str)
        self.assertIn(choice.finish_reason, {"stop", "length"})
        self.assertLessEqual(r.usage.completion_tokens, 5)
        self.assertEqual(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens)
        # No chat template: fewer prompt tokens than the same text as a chat.
        chat = self.chat(max_tokens=1)
        self.assertLess(r.usage.prompt_tokens, chat.usage.prompt_tokens)
        forced = self.complete(max_tokens=3, temperature=0, logit_bias={PARIS: 100})
        self.assertEqual(forced.choices[0].text, "Paris." * 3)

    def test_completion_max_tokens_defaults_to_16(self):
        r = self.complete(temperature=0, logit_bias={PARIS: 100})
        self.assertEqual(r.usage.completion_tokens, 16)
        self.assertEqual(r.choices[0].finish_reason, "length")

    def test_completion_stream_matches_the_complete_reply(self):
        whole = self.complete(max_tokens=6, temperature=0).choices[0].text
        chunks = list(self.complete(
            max_tokens=6, temperature=0, stream=True, stream_options={"include_usage": True}
        ))
        for c in chunks:
            self.assertEqual(c.object, "text_completion")
        with_choices = [c for c in chunks if c.choices]
        self.assertEqual("".join(c.choices[0].text for c in with_choices), whole)
        self.assertIn(with_choices[-1].choices[0].finish_reason, {"stop", "length"})
        self.assertTrue(all(c.choices[0].finish_reason is None for c in with_choices[:-1]))
        self.assertEqual(chunks[-1].choices, [])
        self.assertGreater(chunks[-1].usage.prompt_tokens, 0)

    def test_completion_logprobs_and_echo(self):
        r = self.complete(max_tokens=4, temperature=0, logprobs=2, logit_bias={PARIS: 100})
        lp = r.choices[0].logprobs
        self.assertEqual(lp.tokens, ["Paris."] * 4)
        self.assertEqual(lp.text_offset, [0, 6, 12, 18])
        self.assertTrue(all(x <= 0 for x in lp.token_logprobs))
        self.assertTrue(all(1 <= len(top) <= 2 for top in lp.top_logprobs))
        echoed = self.complete(max_tokens=2, temperature=0, echo=True, logit_bias={PARIS: 100})
        self.assertEqual(echoed.choices[0].text, PROMPT + "Paris." * 2)
        streamed = list(self.complete(
            max_tokens=2, temperature=0, echo=True, stream=True, logit_bias={PARIS: 100}
        ))
        self.assertEqual("".join(c.choices[0].text for c in streamed), PROMPT + "Paris." * 2)

    def test_completion_refusals_name_the_parameter(self):
        self.refused("suffix", lambda: self.complete(max_tokens=2, suffix="x"))
        self.refused("n", lambda: self.complete(max_tokens=2, n=2))
        self.refused("best_of", lambda: self.complete(max_tokens=2, best_of=2))
        self.refused("echo", lambda: self.complete(max_tokens=2, echo=True, logprobs=1))
        self.refused("prompt", lambda: self.client.completions.create(
            model=MODEL, prompt=[1, 2, 3], max_tokens=2))


if __name__ == "__main__":
    unittest.main()
