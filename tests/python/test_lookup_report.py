"""Checks scripts/lookup/report.py, which turns the lookup benchmark's raw
records into tables: the projection (the runs' passes replayed at other
costs), the lines it parses and the rule that says two greedy replies
agree.

Run: python3 -m unittest discover -s tests/python
"""

import importlib.util
import unittest

from qins_stack import ROOT

SPEC = importlib.util.spec_from_file_location("lookup_report", ROOT / "scripts" / "lookup" / "report.py")
report = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(report)


class ProjectionTests(unittest.TestCase):
    COSTS = {1: 10.0, 2: 12.5, 4: 20.0}  # c(2) = 1.25, c(4) = 2.0

    def test_relative_cost_is_linear_between_measured_sizes_and_past_the_last(self):
        self.assertEqual(report.relative_cost(self.COSTS, 10.0, 1), 1.0)
        self.assertEqual(report.relative_cost(self.COSTS, 10.0, 2), 1.25)
        self.assertAlmostEqual(report.relative_cost(self.COSTS, 10.0, 3), 1.625)
        # Past 4 on the last slope (0.375 per token).
        self.assertAlmostEqual(report.relative_cost(self.COSTS, 10.0, 6), 2.75)

    def test_replay_counts_plain_steps_and_passes_at_their_cost(self):
        # 11 tokens: the first from the prefill, 10 decoded. Two passes:
        # 3 drafted, all accepted (4 tokens, c(4) = 2.0); 1 drafted,
        # rejected (1 token, c(2) = 1.25); the other 5 tokens plain.
        run = {"tokens": 11, "passes": [(3, 3), (1, 0)]}
        self.assertAlmostEqual(report.replay(run, self.COSTS), 10 / (5 + 2.0 + 1.25))
        # No pass, no projection; nor without a decode step measured.
        self.assertIsNone(report.replay({"tokens": 11, "passes": []}, self.COSTS))
        self.assertIsNone(report.replay(run, {2: 12.5, 4: 20.0}))

    def test_projection_table_takes_the_median_over_rounds(self):
        runs = {
            ("qins", "edit", "on"): [
                {"tokens": 11, "passes": [(3, 3), (1, 0)]},
                {"tokens": 11, "passes": [(3, 3), (3, 3)]},  # 2 plain + 2 x c(4)
                {"tokens": 11, "passes": []},  # not replayable: left out
            ],
            ("qins", "edit", "off"): [{"tokens": 11, "passes": []}],
        }
        rows = report.projection_table({"qins x": self.COSTS}, runs)
        self.assertEqual(rows[0], "| costs of | edit |")
        median = (10 / 8.25 + 10 / 6.0) / 2
        self.assertEqual(rows[2], f"| qins x | {median:.2f}x |")

    def test_passes_are_read_from_the_trace_log(self):
        import os
        import tempfile
        with tempfile.TemporaryDirectory() as d:
            reply = os.path.join(d, "reply.txt")
            with open(reply + ".err", "w") as f:
                f.write("2026-12-08T00:00:00Z TRACE qins_engine::generate: lookup: verified drafted=4 accepted=2\n")
                # Coloured (a terminal's log): the fields' escapes are dropped.
                f.write("lookup: verified \x1b[3mdrafted\x1b[0m\x1b[2m=\x1b[0m16 \x1b[3maccepted\x1b[0m\x1b[2m=\x1b[0m16\n")
                f.write("[cpu, ... lookup: drafted 20 accepted 18]\n")
            self.assertEqual(report.qins_passes(reply), [(4, 2), (16, 16)])
        self.assertEqual(report.qins_passes("/nonexistent/reply"), [])


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
