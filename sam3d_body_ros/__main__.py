"""`python -m sam3d_body_ros` = the `sam3d-body` command."""
import sys

from .tools.cli import main

sys.exit(main())
