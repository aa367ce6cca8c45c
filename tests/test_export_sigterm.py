import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import sys, time
from export.cli import install_sigterm_unwind
from export.bundle_writer import BundleStaging
install_sigterm_unwind()
with BundleStaging(sys.argv[1]) as tmp:
    (tmp / "model.onnx").write_bytes(b"half")
    print(tmp, flush=True)
    time.sleep(60)
"""


def test_sigterm_during_export_leaves_no_partial_bundle(tmp_path):
    out = tmp_path / "bundle"
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(out)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    partial = Path(proc.stdout.readline().strip())
    assert partial.is_dir() and partial.name.startswith(".bundle.partial-")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 128 + signal.SIGTERM
    assert not partial.exists() and not out.exists()
    assert list(tmp_path.iterdir()) == []
