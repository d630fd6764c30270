"""Checks the qinsd LaunchAgent: the template in launchd/ and, when QINS_BIN
names a built `qins`, the plist that `qins service install --dry-run` renders
from it (the client embeds the same template).

Run: python3 -m unittest discover -s tests/python
     QINS_BIN=target/release/qins python3 -m unittest discover -s tests/python
"""

import os
import plistlib
import subprocess
import tempfile
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "launchd" / "dev.qins.qinsd.plist"


class LaunchAgentChecks:
    def check_agent(self, plist):
        self.assertEqual(plist["Label"], "dev.qins.qinsd")
        args = plist["ProgramArguments"]
        self.assertIsInstance(args, list)
        self.assertTrue(args[0].startswith("/"), "qinsd must be an absolute path")
        self.assertTrue(os.path.basename(args[0]).startswith("qinsd"))
        self.assertNotIn("--daemonize", args, "launchd wants qinsd in the foreground")
        self.assertIn("--models-dir", args)
        self.assertTrue(args[args.index("--models-dir") + 1].startswith("/"))
        self.assertIs(plist["RunAtLoad"], True)
        self.assertEqual(plist["KeepAlive"], {"SuccessfulExit": False})
        for key in ("StandardOutPath", "StandardErrorPath"):
            self.assertTrue(plist[key].startswith("/"), key)
            self.assertTrue(plist[key].endswith("/Library/Logs/qinsd.log"), key)


class TemplateTest(LaunchAgentChecks, unittest.TestCase):
    def test_template_is_a_valid_launch_agent(self):
        with open(TEMPLATE, "rb") as f:
            self.check_agent(plistlib.load(f))


class RenderedTest(LaunchAgentChecks, unittest.TestCase):
    def setUp(self):
        self.qins = os.environ.get("QINS_BIN")
        if not self.qins:
            self.skipTest("QINS_BIN is unset: set it to a built qins to check the rendered plist")

    def render(self, home, *args):
        env = dict(os.environ, HOME=home)
        out = subprocess.run(
            [self.qins, "service", "install", "--dry-run", "--manager", "launchd", *args],
            check=True, capture_output=True, text=True, env=env,
        ).stdout
        start, end = out.index("<?xml"), out.index("</plist>") + len("</plist>")
        return out, plistlib.loads(out[start:end].encode())

    def test_rendered_plist_has_the_given_paths_escaped(self):
        with tempfile.TemporaryDirectory(prefix="home with space & <x>") as home:
            qinsd = os.path.join(home, "my bin", "qinsd")
            models = os.path.join(home, "R&D models")
            out, plist = self.render(
                home, "--qinsd", qinsd, "--model", "tiny", "--models-dir", models
            )
            self.check_agent(plist)
            self.assertEqual(
                plist["ProgramArguments"],
                [qinsd, "--model", "tiny", "--models-dir", models],
            )
            self.assertEqual(
                plist["StandardOutPath"], os.path.join(home, "Library", "Logs", "qinsd.log")
            )
            self.assertIn("launchctl bootstrap gui/", out)
            agent = os.path.join(home, "Library", "LaunchAgents", "dev.qins.qinsd.plist")
            self.assertIn(agent, out)
            self.assertFalse(os.path.exists(agent), "--dry-run must not write the file")


if __name__ == "__main__":
    unittest.main()
