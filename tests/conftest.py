"""Fixtures of the whole suite."""

import os
import tempfile

# soma's default data folder is under the user's HOME (~/.local/state/soma); tests that do not
# choose their folders write to a scratch one instead. test_defaults.py starts servers without it.
os.environ.setdefault("SOMA_STATE_DIR", tempfile.mkdtemp(prefix="soma-test-state-"))
