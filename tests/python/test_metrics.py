"""qins-web's /metrics, parsed with `prometheus_client`'s OpenMetrics text
parser (and its Prometheus text parser, which scrapers without OpenMetrics
use), before and after chats through ollama's API and the OpenAI one: the
request, token and latency counts move by what the chats did, and qinsd's
gauges are there. `prometheus-client` is pinned in requirements.txt.
"""

import json
import unittest
import urllib.request

try:
    from prometheus_client.openmetrics import parser as openmetrics
    from prometheus_client import parser as prometheus_text
except ImportError:  # reported as a failure of every test, see setUp
    openmetrics = prometheus_text = None

from qins_stack import MODEL, Stack, require_package


def samples(text, parse):
    """{(sample name, frozenset of labels): value} of one exposition."""
    out = {}
    for family in parse(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(table, name, **labels):
    return table.get((name, frozenset(labels.items())), 0.0)


class MetricsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if openmetrics is None:
            return  # every test fails with the reason
        cls.stack = Stack.start(cls)

    def setUp(self):
        require_package(self, openmetrics, "prometheus_client")

    def scrape(self):
        status, content_type, text = self.stack.get("/metrics")
        self.assertEqual(status, 200)
        self.assertTrue(content_type.startswith("application/openmetrics-text"), content_type)
        return text

    def post(self, path, body):
        request = urllib.request.Request(
            self.stack.base + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as r:
            return json.load(r)

    def test_counts_move_after_chats_and_qinsd_gauges_are_read(self):
        before = samples(self.scrape(), openmetrics.text_string_to_metric_families)
        reply = self.post(
            "/api/chat",
            {
                "model": MODEL, "stream": False,
                "messages": [{"role": "user", "content": "Hello"}],
                "options": {"num_predict": 5, "temperature": 0},
            },
        )
        openai = self.post(
            "/v1/chat/completions",
            {"model": MODEL, "max_tokens": 3, "temperature": 0,
             "messages": [{"role": "user", "content": "Hi"}]},
        )
        text = self.scrape()
        after = samples(text, openmetrics.text_string_to_metric_families)

        def moved(name, **labels):
            return value(after, name, **labels) - value(before, name, **labels)

        self.assertEqual(moved("qins_web_requests_total", route="/api/chat", code="200"), 1)
        self.assertEqual(
            moved("qins_web_requests_total", route="/v1/chat/completions", code="200"), 1
        )
        self.assertGreaterEqual(moved("qins_web_requests_total", route="/metrics", code="200"), 1)
        completion = reply["eval_count"] + openai["usage"]["completion_tokens"]
        prompt = reply["prompt_eval_count"] + openai["usage"]["prompt_tokens"]
        self.assertEqual(moved("qins_web_completion_tokens_total"), completion)
        self.assertEqual(moved("qins_web_prompt_tokens_total"), prompt)
        self.assertEqual(moved("qins_web_time_to_first_token_seconds_count"), 2)
        self.assertGreater(moved("qins_web_time_to_first_token_seconds_sum"), 0)
        self.assertEqual(
            moved("qins_web_time_to_first_token_seconds_bucket", le="+Inf"), 2,
            "every observation is in the +Inf bucket",
        )
        self.assertEqual(moved("qins_web_decode_tokens_per_second_count"), 2)
        self.assertGreater(moved("qins_web_decode_tokens_per_second_sum"), 0)

        self.assertEqual(value(after, "qinsd_up"), 1)
        self.assertEqual(value(after, "qinsd_queued_requests"), 0)
        self.assertEqual(value(after, "qinsd_active_requests"), 0)
        self.assertGreater(value(after, "qinsd_model_resident_bytes"), 0)
        self.assertGreater(value(after, "qinsd_process_resident_memory_bytes"), 0)
        self.assertEqual(
            value(after, "qinsd_model", model=MODEL, architecture="phi3", device="cpu"), 1
        )

        # Scrapers that speak the older Prometheus text format read it too.
        plain = samples(text, prometheus_text.text_string_to_metric_families)
        self.assertEqual(value(plain, "qinsd_up"), 1)
        self.assertEqual(
            value(plain, "qins_web_completion_tokens_total"),
            value(after, "qins_web_completion_tokens_total"),
        )

    def test_unknown_routes_are_one_label(self):
        for path in ("/no/such/a", "/no/such/b"):
            self.assertEqual(self.stack.get(path)[0], 404)
        after = samples(self.scrape(), openmetrics.text_string_to_metric_families)
        self.assertGreaterEqual(value(after, "qins_web_requests_total", route="unmatched", code="404"), 2)
        routes = {dict(labels).get("route") for (name, labels) in after if name == "qins_web_requests_total"}
        self.assertFalse(any(r and r.startswith("/no/") for r in routes), routes)


if __name__ == "__main__":
    unittest.main()
