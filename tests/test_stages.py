"""The stage scripts' start-up: stages that never train must not pay for TensorFlow."""

import subprocess
import sys
from pathlib import Path

STAGES = Path(__file__).resolve().parent.parent / "stages"


def test_fetch_and_segment_stages_start_without_tensorflow_keras_or_mlflow():
    imported = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, fetch, segment; "
            "print(sorted({'tensorflow', 'keras', 'mlflow'} & set(sys.modules)))",
        ],
        cwd=STAGES,
        capture_output=True,
        text=True,
        check=True,
    )
    assert imported.stdout.strip() == "[]"
