"""The OpenAI-compatible API of qins-web, through the official `openai`
package: a real qins-web in front of a real qinsd serving a tiny
random-weight model (its replies are random text; only their shape is
checked).

qinsd and qins-web are started by qins_stack.Stack. `openai` is pinned in
requirements.txt; tests/python/run.sh installs it into a cached venv.
"""

import unittest

try:
    import openai
except ImportError:  # reported as a failure of every test, see setUp
    openai = None

from qins_stack import MODEL, Stack, openai_client, require_package


class OpenAIApiTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.client = None
        if openai is None:
            return  # every test fails with the reason
        cls.stack = Stack.start(cls)
        cls.client = openai_client(openai, cls.stack)

    def setUp(self):
        require_package(self, openai, "openai")

    def ask(self, **kw):
        return self.client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hello there"}], **kw
        )

    def test_non_streaming(self):
        r = self.ask(max_tokens=8)
        self.assertEqual(r.object, "chat.completion")
        self.assertEqual(r.model, MODEL)
        self.assertIsInstance(r.id, str)
        self.assertEqual(len(r.choices), 1)
        choice = r.choices[0]
        self.assertEqual(choice.message.role, "assistant")
        self.assertIsInstance(choice.message.content, str)
        self.assertIn(choice.finish_reason, {"stop", "length"})
        self.assertGreater(r.usage.prompt_tokens, 0)
        self.assertLessEqual(r.usage.completion_tokens, 8)
        self.assertEqual(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens)

    def test_token_limit_ends_with_length(self):
        # Greedy decoding runs far past one token on the tiny model.
        r = self.ask(max_completion_tokens=1, temperature=0)
        self.assertEqual(r.choices[0].finish_reason, "length")
        self.assertEqual(r.usage.completion_tokens, 1)

    def test_streaming(self):
        chunks = list(self.ask(max_tokens=8, stream=True))
        self.assertTrue(chunks, "no chunks")
        for c in chunks:
            self.assertEqual(c.object, "chat.completion.chunk")
            self.assertEqual(c.model, MODEL)
            self.assertIsNone(c.usage, "usage only when asked for")
            self.assertEqual(len(c.choices), 1)
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
        self.assertTrue(any(c.choices[0].delta.content for c in chunks), "no delta content")
        self.assertIsInstance(text, str)
        self.assertIn(chunks[-1].choices[0].finish_reason, {"stop", "length"})
        self.assertTrue(
            all(c.choices[0].finish_reason is None for c in chunks[:-1]),
            "only the last chunk has a finish_reason",
        )

    def test_streaming_with_usage(self):
        chunks = list(
            self.ask(max_tokens=8, stream=True, stream_options={"include_usage": True})
        )
        last = chunks[-1]
        self.assertEqual(last.choices, [], "the usage chunk has no choices")
        self.assertIsNotNone(last.usage)
        self.assertGreater(last.usage.prompt_tokens, 0)
        self.assertLessEqual(last.usage.completion_tokens, 8)
        self.assertEqual(
            last.usage.total_tokens, last.usage.prompt_tokens + last.usage.completion_tokens
        )
        with_choices = [c for c in chunks if c.choices]
        self.assertIn(with_choices[-1].choices[0].finish_reason, {"stop", "length"})
        self.assertTrue(all(c.usage is None for c in chunks[:-1]))

    def test_models_list(self):
        ids = [m.id for m in self.client.models.list()]
        self.assertIn(MODEL, ids)

    def test_unknown_model_is_not_found(self):
        # One rule for every dialect (qins-web's edge::model): a model other
        # than the resident one is a 404 that says how to load it.
        with self.assertRaises(openai.NotFoundError) as cm:
            self.client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "x"}], max_tokens=1
            )
        self.assertEqual(cm.exception.status_code, 404)
        self.assertEqual(cm.exception.code, "not_found")
        self.assertIn("qins load", str(cm.exception))
        with self.assertRaises(openai.NotFoundError):
            self.client.completions.create(model="gpt-4o", prompt="x", max_tokens=1)
        # Aliases of the resident model answer.
        r = self.client.chat.completions.create(
            model=MODEL + ":latest", messages=[{"role": "user", "content": "x"}], max_tokens=1
        )
        self.assertEqual(r.model, MODEL)

    def test_bad_temperature_is_bad_request(self):
        with self.assertRaises(openai.BadRequestError) as cm:
            self.ask(max_tokens=8, temperature=-1)
        self.assertEqual(cm.exception.status_code, 400)
        self.assertEqual(cm.exception.code, "invalid_request")

    def test_n_above_one_is_bad_request(self):
        with self.assertRaises(openai.BadRequestError) as cm:
            self.ask(max_tokens=8, n=2)
        self.assertEqual(cm.exception.param, "n")
        self.assertIn("one choice", cm.exception.message)


if __name__ == "__main__":
    unittest.main()
