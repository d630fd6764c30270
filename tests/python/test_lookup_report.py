"""Checks scripts/lookup/report.py, which turns the lookup benchmark's raw
records into tables: the projection formula, the summary lines it parses
and the rule that says two greedy replies agree.

Run: python3 -m unittest discover -s tests/python
"""

import importlib.util
import unittest

from qins_stack import ROOT

SPEC = importlib.util.spec_from_file_location("lookup_report", ROOT / "scripts" / "lookup" / "report.py")
report = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(report)


class ProjectionTests(unittest.TestCase):
    def test_expected_tokens_per_pass(self):
        # Every draft accepted: all k tokens; none: the one the pass samples.
        self.assertEqual(report.expected_tokens(1.0, 4), 4.0)
        self.assertEqual(report.expected_tokens(0.0, 8), 1.0)
        # a = 0.5, 1 draft: 1 + 0.5.
        self.assertAlmostEqual(report.expected_tokens(0.5, 2), 1.5)
        # a = 0.5, 3 drafts: 1 + 0.5 + 0.25 + 0.125.
        self.assertAlmostEqual(report.expected_tokens(0.5, 4), 1.875)

    def test_projection_divides_by_the_cost_in_decode_steps(self):
        costs = {"qins x": {1: 10.0, 2: 12.5, 4: 20.0}}
        rows = report.projection_table(costs, {("qins", "edit"): 0.5})
        self.assertEqual(rows[2], "| qins x | edit | 50.0% (qins) | 1.20x | 0.94x |")
        # Without qins's own figure, llama-lookup's stands in and says so.
        rows = report.projection_table(costs, {("qins", "edit"): None, ("llama", "edit"): 1.0})
        self.assertIn("(llama-lookup)", rows[2])
        self.assertTrue(rows[2].endswith("| 1.60x | 2.00x |"), rows[2])


class ParsingTests(unittest.TestCase):
    def test_qins_summary_with_and_without_lookup_counters(self):
        line = ("[cpu, load 0.11 s, prompt 235 tokens, first token after 0.52 s, 154 tokens at 176.9 tok/s, "
                "finish: Stop, lookup: drafted 143 accepted 135]")
        run = report.parse_run("qins", line, "unused")
        self.assertEqual((run["prompt"], run["tokens"], run["tok_s"]), (235, 154, 176.9))
        self.assertEqual((run["drafted"], run["accepted"]), (143, 135))
        older = "[cpu, load 1.01 s, prompt 234 tokens, first token after 4.15 s, 178 tokens at 5.4 tok/s, finish: Stop]"
        run = report.parse_run("qins", older, "unused")
        self.assertEqual((run["tokens"], run["drafted"]), (178, None))
        self.assertIsNone(report.parse_run("qins", "n/a", "unused"))

    def test_replies_agree_exactly_for_qins_and_up_to_the_shorter_for_llama(self):
        self.assertTrue(report.same_reply("qins", b"abc", b"abc"))
        self.assertFalse(report.same_reply("qins", b"abc", b"abcd"))
        self.assertTrue(report.same_reply("llama", b"abc", b"abcd\n"))
        self.assertFalse(report.same_reply("llama", b"abx", b"abcd"))


if __name__ == "__main__":
    unittest.main()
