import sys

from workflow_retention.cli import main

sys.exit(main())
