"""Embeddings through the official packages: `openai` (`embeddings.create`
on /v1/embeddings: one input, a batch, token ids, base64) and `ollama`
(`embed` on /api/embed, truncation, the older /api/embeddings), on a real
qins-web in front of a real qinsd serving the tiny random-weight model.

Vectors are checked for what holds whatever the weights: unit length,
determinism, a batch equal to one input at a time, base64 equal to the
floats, and the refusals (dimensions, over-long input). The semantic check
needs real weights, so it runs on SmolLM2 in the engine's tests
(qins-engine/tests/engine_smollm2.rs: a paraphrase nearer than an
unrelated sentence on three fixed triples).
"""

import base64
import math
import re
import struct
import unittest

try:
    import openai
except ImportError:  # reported as a failure of every test, see setUp
    openai = None
try:
    import ollama
except ImportError:
    ollama = None

from qins_stack import MODEL, Stack, openai_client, require_package

TEXTS = ["The cat sleeps on the sofa.", "Interest rates rose again.", "Bread at home"]


def norm(v):
    return math.sqrt(sum(x * x for x in v))


class EmbeddingsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.stack = Stack.start(cls)
        cls.openai = openai_client(openai, cls.stack) if openai else None
        cls.ollama = ollama.Client(host=cls.stack.base, timeout=120) if ollama else None

    def assert_close(self, a, b, tol=1e-5):
        self.assertEqual(len(a), len(b))
        for x, y in zip(a, b):
            self.assertAlmostEqual(x, y, delta=tol)

    def test_openai_single_batch_and_tokens(self):
        require_package(self, openai, "openai")
        one = self.openai.embeddings.create(model=MODEL, input=TEXTS[0])
        self.assertEqual(one.object, "list")
        self.assertEqual(len(one.data), 1)
        vector = one.data[0].embedding
        self.assertGreater(len(vector), 0)
        self.assertAlmostEqual(norm(vector), 1.0, places=4)
        self.assertGreater(one.usage.prompt_tokens, 0)
        self.assertEqual(one.usage.total_tokens, one.usage.prompt_tokens)
        again = self.openai.embeddings.create(model=MODEL, input=TEXTS[0])
        self.assertEqual(again.data[0].embedding, vector, "deterministic")

        batch = self.openai.embeddings.create(model=MODEL, input=TEXTS)
        self.assertEqual([d.index for d in batch.data], [0, 1, 2])
        singles = [self.openai.embeddings.create(model=MODEL, input=t) for t in TEXTS]
        for d, s in zip(batch.data, singles):
            self.assert_close(d.embedding, s.data[0].embedding)
            self.assertAlmostEqual(norm(d.embedding), 1.0, places=4)
        self.assertEqual(
            batch.usage.prompt_tokens, sum(s.usage.prompt_tokens for s in singles)
        )
        self.assertNotEqual(batch.data[0].embedding, batch.data[1].embedding)

        ids = self.openai.embeddings.create(model=MODEL, input=[[1, 2, 3], [4, 5]])
        self.assertEqual(ids.usage.prompt_tokens, 5)
        alone = self.openai.embeddings.create(model=MODEL, input=[4, 5])
        self.assert_close(ids.data[1].embedding, alone.data[0].embedding)

    def test_openai_base64_is_the_little_endian_floats(self):
        require_package(self, openai, "openai")
        floats = self.openai.embeddings.create(
            model=MODEL, input=TEXTS[1], encoding_format="float"
        ).data[0].embedding
        # Asked for base64 explicitly, the package hands the string over as is.
        encoded = self.openai.embeddings.create(
            model=MODEL, input=TEXTS[1], encoding_format="base64"
        ).data[0].embedding
        self.assertIsInstance(encoded, str)
        data = base64.b64decode(encoded)
        decoded = struct.unpack(f"<{len(data) // 4}f", data)
        self.assert_close(decoded, floats, tol=0)
        # Unasked, the package requests base64 and decodes it (numpy or not).
        default = self.openai.embeddings.create(model=MODEL, input=TEXTS[1])
        self.assert_close(list(default.data[0].embedding), floats, tol=0)

    def test_openai_refusals(self):
        require_package(self, openai, "openai")
        size = len(self.openai.embeddings.create(model=MODEL, input="x").data[0].embedding)
        same = self.openai.embeddings.create(model=MODEL, input="x", dimensions=size)
        self.assertEqual(len(same.data[0].embedding), size)
        with self.assertRaises(openai.BadRequestError) as cm:
            self.openai.embeddings.create(model=MODEL, input="x", dimensions=size // 2)
        self.assertEqual(cm.exception.body["param"], "dimensions")
        self.assertIn(str(size), cm.exception.body["message"])
        with self.assertRaises(openai.BadRequestError) as cm:
            self.openai.embeddings.create(model=MODEL, input=[1] * 100_000)
        self.assertRegex(cm.exception.body["message"], r"context holds \d+")

    def test_ollama_embed_truncate_and_legacy_embeddings(self):
        require_package(self, ollama, "ollama")
        r = self.ollama.embed(model=MODEL, input=TEXTS)
        self.assertEqual(len(r.embeddings), 3)
        self.assertGreater(r.prompt_eval_count, 0)
        single = self.ollama.embed(model=MODEL, input=TEXTS[2])
        self.assert_close(r.embeddings[2], single.embeddings[0])
        self.assertAlmostEqual(norm(single.embeddings[0]), 1.0, places=4)
        legacy = self.ollama.embeddings(model=MODEL, prompt=TEXTS[2])
        self.assert_close(legacy.embedding, single.embeddings[0])

        long_text = "word " * 20_000
        with self.assertRaises(ollama.ResponseError) as cm:
            self.ollama.embed(model=MODEL, input=long_text, truncate=False)
        self.assertEqual(cm.exception.status_code, 400)
        context = int(re.search(r"context holds (\d+)", cm.exception.error).group(1))
        cut = self.ollama.embed(model=MODEL, input=long_text)  # truncate defaults to true
        self.assertEqual(cut.prompt_eval_count, context)
        self.assertAlmostEqual(norm(cut.embeddings[0]), 1.0, places=4)

        with self.assertRaises(ollama.ResponseError) as cm:
            self.ollama.embed(model="missing", input="x")
        self.assertEqual(cm.exception.status_code, 404)


if __name__ == "__main__":
    unittest.main()
