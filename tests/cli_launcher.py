"""Run the `runner` CLI with the test step modules and connection kinds registered
(subprocess tests: ``python tests/cli_launcher.py apply ...``)."""
import engine_support  # noqa: F401  (registers the t_* steps and test connection kinds)
from runner.__main__ import main

if __name__ == "__main__":
    main()
