import os

# JAX takes 75% of GPU memory at its first use unless told otherwise; torch kernels and
# subprocesses in the same session need it too.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

# Hypothesis profiles (tests/test_properties.py): "ci", the default, keeps the property tests
# small enough for Triton's interpreter on a CPU; HYPOTHESIS_PROFILE=gpu draws more examples
# and larger shapes, and on a GPU runs the compiled kernels too. Its example database lives in
# .pytest_cache, which git ignores.
from pathlib import Path  # noqa: E402

from hypothesis import Phase, settings  # noqa: E402
from hypothesis.database import DirectoryBasedExampleDatabase  # noqa: E402

_DATABASE = DirectoryBasedExampleDatabase(Path(__file__).parent.parent / ".pytest_cache" / "hypothesis")
# "ci" draws the same examples on every run (a gate must not pass or fail by chance); "gpu"
# draws new ones each time, keeping what failed in the database. On the GPU each new shape
# compiles a kernel (seconds): "gpu" reports a failing example as drawn, without shrinking it,
# so that the report comes within the device run's time limit.
settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True, database=None,
                          print_blob=True)
settings.register_profile("gpu", max_examples=100, deadline=None, database=_DATABASE, print_blob=True,
                          phases=[Phase.explicit, Phase.reuse, Phase.generate])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
