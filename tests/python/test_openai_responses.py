"""OpenAI's Responses API on qins-web, through the official `openai`
package's `client.responses`: a real qins-web in front of a real qinsd
serving the tiny random-weight model (its replies are random text; shapes,
event order, the function-call round trip, stored responses and refusals
are checked, not wording). Calls are forced with `tool_choice`, and qinsd's
call grammar makes their arguments follow the tool's schema whatever the
weights.
"""

import json
import unittest

try:
    import openai
except ImportError:  # reported as a failure of every test, see setUp
    openai = None

from qins_stack import MODEL, Stack, openai_client, require_package

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 12},
                       "unit": {"enum": ["C", "F"]}},
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
    "strict": True,
}
# Every value bounded, so even a random model finishes well within the limit.
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}
PERSON = {"format": {"type": "json_schema", "name": "person", "schema": SCHEMA, "strict": True}}
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]
FORCED = {"type": "function", "name": "get_weather"}


class ResponsesApiTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.client = None
        if openai is None:
            return  # every test fails with the reason
        cls.stack = Stack.start(cls)
        cls.client = openai_client(openai, cls.stack)

    def setUp(self):
        require_package(self, openai, "openai")

    def create(self, **kw):
        """A greedy response of a few tokens unless told otherwise."""
        kw.setdefault("input", "Hello there")
        kw.setdefault("max_output_tokens", 6)
        kw.setdefault("temperature", 0)
        return self.client.responses.create(model=MODEL, **kw)

    def refused(self, param, call):
        with self.assertRaises(openai.BadRequestError) as cm:
            call()
        self.assertEqual(cm.exception.body.get("param"), param, cm.exception.body)
        return cm.exception

    def test_a_response_has_openai_s_shape(self):
        r = self.create(instructions="Be brief.", metadata={"k": "v"}, user="u")
        self.assertTrue(r.id.startswith("resp_"), r.id)
        self.assertEqual((r.object, r.model), ("response", MODEL))
        self.assertIn(r.status, ("completed", "incomplete"))
        self.assertEqual(r.instructions, "Be brief.")
        self.assertEqual(r.metadata, {"k": "v"})
        self.assertEqual(r.max_output_tokens, 6)
        self.assertEqual([item.type for item in r.output], ["message"])
        message = r.output[0]
        self.assertTrue(message.id.startswith("msg_"), message.id)
        self.assertEqual((message.role, message.content[0].type), ("assistant", "output_text"))
        self.assertEqual(r.output_text, message.content[0].text)
        self.assertGreater(r.usage.input_tokens, 0)
        self.assertEqual(r.usage.total_tokens, r.usage.input_tokens + r.usage.output_tokens)
        self.assertEqual(r.usage.output_tokens_details.reasoning_tokens, 0)
        if r.status == "incomplete":
            self.assertEqual(r.incomplete_details.reason, "max_output_tokens")
            self.assertEqual(r.usage.output_tokens, 6)
        # Instructions are read: they lengthen the prompt.
        bare = self.create()
        self.assertGreater(r.usage.input_tokens, bare.usage.input_tokens)

    def test_streaming_gives_the_event_sequence_and_the_same_text(self):
        whole = self.create()
        events = list(self.create(stream=True))
        kinds = [e.type for e in events]
        self.assertEqual(kinds[:4], ["response.created", "response.in_progress",
                                     "response.output_item.added",
                                     "response.content_part.added"], kinds)
        last = "response.completed" if whole.status == "completed" else "response.incomplete"
        self.assertEqual(kinds[-4:], ["response.output_text.done", "response.content_part.done",
                                      "response.output_item.done", last], kinds)
        self.assertTrue(all(k == "response.output_text.delta" for k in kinds[4:-4]), kinds)
        self.assertEqual([e.sequence_number for e in events], list(range(len(events))))
        text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        self.assertEqual(text, whole.output_text)
        final = events[-1].response
        self.assertEqual(final.output_text, text)
        self.assertEqual(final.usage.output_tokens, whole.usage.output_tokens)
        self.assertEqual(events[0].response.status, "in_progress")
        # The SDK's stream helper rebuilds the response from the events (it
        # needs `response.completed`: a reply the schema's grammar ends).
        whole = self.create(max_output_tokens=150, text=PERSON)
        with self.client.responses.stream(model=MODEL, input="Hello there", temperature=0,
                                          max_output_tokens=150, text=PERSON) as stream:
            text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
            rebuilt = stream.get_final_response()
        self.assertEqual(text, whole.output_text)
        self.assertEqual(rebuilt.output_text, text)
        self.assertEqual(set(json.loads(text)), {"name", "age"})

    def test_a_function_call_round_trip(self):
        first = self.create(input=QUESTION, tools=[WEATHER], tool_choice=FORCED,
                            parallel_tool_calls=False, max_output_tokens=150,
                            temperature=1.0, extra_body={"seed": 1})
        self.assertEqual(first.status, "completed")
        self.assertEqual([item.type for item in first.output], ["function_call"])
        call = first.output[0]
        self.assertTrue(call.call_id.startswith("call_"), call.call_id)
        self.assertTrue(call.id.startswith("fc_"), call.id)
        self.assertEqual(call.name, "get_weather")
        args = json.loads(call.arguments)
        self.assertEqual(set(args), {"city", "unit"})
        self.assertIn(args["unit"], ("C", "F"))
        result = {"type": "function_call_output", "call_id": call.call_id,
                  "output": "18 degrees, sunny"}
        # The client sends the whole conversation back...
        answer = self.create(input=QUESTION + first.output + [result], tools=[WEATHER],
                             max_output_tokens=4)
        self.assertEqual([item.type for item in answer.output], ["message"])
        without_result = self.create(input=QUESTION + first.output, tools=[WEATHER],
                                     max_output_tokens=4)
        self.assertGreater(answer.usage.input_tokens, without_result.usage.input_tokens)
        # ...or names the stored response: the same conversation, to the token.
        chained = self.create(previous_response_id=first.id, input=[result], tools=[WEATHER],
                              max_output_tokens=4)
        self.assertEqual(chained.previous_response_id, first.id)
        self.assertEqual(chained.usage.input_tokens, answer.usage.input_tokens)

    def test_a_streamed_call_comes_as_a_function_call_item(self):
        events = list(self.create(input=QUESTION, tools=[WEATHER], tool_choice="required",
                                  parallel_tool_calls=False, max_output_tokens=150,
                                  temperature=1.0, extra_body={"seed": 2}, stream=True))
        kinds = [e.type for e in events]
        self.assertEqual(kinds, ["response.created", "response.in_progress",
                                 "response.output_item.added",
                                 "response.function_call_arguments.delta",
                                 "response.function_call_arguments.done",
                                 "response.output_item.done", "response.completed"])
        added, delta, done, item_done, completed = events[2:]
        self.assertEqual(added.item.type, "function_call")
        self.assertEqual(delta.item_id, added.item.id)
        self.assertEqual(done.arguments, delta.delta)
        self.assertEqual(item_done.item.arguments, done.arguments)
        self.assertEqual(set(json.loads(done.arguments)), {"city", "unit"})
        self.assertEqual(completed.response.output[0].call_id, added.item.call_id)
        with self.client.responses.stream(model=MODEL, input=QUESTION, tools=[WEATHER],
                                          tool_choice="required", parallel_tool_calls=False,
                                          max_output_tokens=150,
                                          temperature=1.0, extra_body={"seed": 2}) as stream:
            rebuilt = stream.get_final_response()
        self.assertEqual(rebuilt.output[0].arguments, done.arguments)

    def test_several_calls_are_several_function_call_items(self):
        """Greedy, the tiny model writes calls up to qinsd's bound of 8 when
        parallel calls are allowed (the default); `false` asks for one."""
        ask = dict(input=QUESTION, tools=[WEATHER], tool_choice="required",
                   max_output_tokens=700, temperature=0)
        whole = self.create(**ask)
        self.assertEqual(whole.status, "completed")
        calls = whole.output
        self.assertGreaterEqual(len(calls), 2)
        self.assertTrue(all(item.type == "function_call" for item in calls), calls)
        self.assertEqual(len({c.call_id for c in calls}), len(calls), "call ids are unique")
        streamed = [e for e in self.create(stream=True, **ask)
                    if e.type == "response.output_item.done"]
        self.assertEqual([e.output_index for e in streamed], list(range(len(calls))))
        self.assertEqual([e.item.arguments for e in streamed], [c.arguments for c in calls])
        one = self.create(parallel_tool_calls=False, **ask)
        self.assertEqual([item.type for item in one.output], ["function_call"])

    def test_json_schema_output_parses(self):
        r = self.create(max_output_tokens=150, temperature=1.0, extra_body={"seed": 3},
                        text=PERSON)
        self.assertEqual(r.status, "completed")
        self.assertEqual(r.text.format.type, "json_schema")
        value = json.loads(r.output_text)
        self.assertEqual(set(value), {"name", "age"})
        self.assertLessEqual(len(value["name"]), 8)
        self.assertTrue(0 <= value["age"] <= 120)

    def test_previous_response_id_continues_a_stored_conversation(self):
        first = self.create(input="My name is Ada.", instructions="Be brief.")
        second = self.create(previous_response_id=first.id, input="What is my name?")
        alone = self.create(input="What is my name?")
        self.assertGreater(second.usage.input_tokens, alone.usage.input_tokens)
        # Chained turns share a qinsd session: the third reuses the second's prefix.
        third = self.create(previous_response_id=second.id, input="Thanks.")
        self.assertGreater(third.usage.input_tokens_details.cached_tokens, 0)
        self.assertEqual(self.client.responses.retrieve(first.id).output_text, first.output_text)
        self.assertIsNone(self.client.responses.delete(first.id))
        with self.assertRaises(openai.NotFoundError):
            self.client.responses.retrieve(first.id)
        error = self.refused("previous_response_id",
                             lambda: self.create(previous_response_id=first.id, input="x"))
        self.assertEqual(error.code, "previous_response_not_found")
        # store: false keeps nothing to continue.
        unstored = self.create(store=False)
        self.assertFalse(unstored.store)
        self.refused("previous_response_id",
                     lambda: self.create(previous_response_id=unstored.id, input="x"))

    def test_errors_name_what_is_refused(self):
        with self.assertRaises(openai.NotFoundError) as cm:
            self.client.responses.create(model="gpt-4o", input="x")
        self.assertIn("qins load", cm.exception.message)
        self.refused("truncation", lambda: self.create(truncation="auto"))
        self.refused("reasoning.effort", lambda: self.create(reasoning={"effort": "low"}))
        self.refused("conversation", lambda: self.create(conversation="conv_1"))
        self.refused("tools[0].type", lambda: self.create(tools=[{"type": "web_search"}]))
        image = [{"role": "user", "content": [
            {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]}]
        error = self.refused("input[0].content[0].type", lambda: self.create(input=image))
        self.assertIn("input_image", error.message)
        # qinsd's refusals name the Responses parameter.
        self.refused("top_p", lambda: self.create(top_p=1.5))
        self.refused("max_output_tokens", lambda: self.create(max_output_tokens=0))
        self.refused("text.format", lambda: self.create(
            tools=[WEATHER], text={"format": {"type": "json_object"}}))


if __name__ == "__main__":
    unittest.main()
