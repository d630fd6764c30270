"""Checks the qinsd LaunchAgent: the template in launchd/ and the plist that
`qins service install --dry-run` renders from it (the client embeds the same
template). Both are parsed with the standard library's plistlib, so they run
on Linux as on macOS.

The `qins` checked is QINS_BIN, else the one in QINS_BIN_DIR (see
qins_stack.bin_dir). Without a built `qins` the rendered check skips, saying
so, except under CI (CI=true or CI=1), where it fails.

Run: python3 -m unittest discover -s tests/python
"""

import os
import plistlib
import subprocess
import tempfile
import unittest

from qins_stack import ROOT, bin_dir, require

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
        self.qins = os.environ.get("QINS_BIN") or str(bin_dir() / "qins")
        require(
            self,
            os.access(self.qins, os.X_OK),
            f"a built qins at {self.qins} (cargo build --release --workspace --bins, "
            "or set QINS_BIN)",
        )

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
